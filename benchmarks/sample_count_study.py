"""How many diffusion samples K to average, chosen together with the ensemble weight on validation cases only.

A DDPM prediction is one sample of the model's distribution; ``--num_samples K`` averages K of them. This study asks
whether that average, alone or in the ensemble with stock nnU-Net, beats one sample, and whether a validation-chosen
(K, w) closes the gap to the stock seed-ensemble that the evidence study found (docs/benchmarks.md).

One prediction run per model and split gives every K: ``--num_samples K_max --save_samples --save_probabilities``
writes each sample's exported probabilities, sample k's noise does not depend on K, so the mean of the first k samples
is what ``--num_samples k`` would give (up to the export's resampling of each sample instead of their mean). The
ensemble ``(1 - w) p_diffusion + w p_stock`` is formed from exported probabilities, as
``nnUNetv2_diffusion_choose_ensemble`` does: on the fold's validation cases with the stock model's final validation,
on the test cases with its ``--save_probabilities`` test prediction. (K, w) is the best validation Dice (ties: the
smaller K, then w nearest 0.5); test cases are only scored, beside the plain average (w = 0.5, no choice, as the
seed-ensemble control averages its two stock models). Dice: every foreground label, nnU-Net's convention, mean over
labels per case; the control (a prediction folder, e.g. the seed-ensemble) is scored by the same code. An average can
only gain where its members differ, so the test Dice between two diffusion samples, between a sample and stock, and
(``--partner``) between stock and the control's second stock model is reported too.

    .venv/bin/python benchmarks/sample_count_study.py --dataset hc18 --work W --tag r4_block \\
        -m W/nnUNet_results/replicate_4/Dataset520_HC18/nnUNetTrainerDiffRecycle_blockFiLM_1000iters__nnUNetPlans__2d \\
        --ensemble_with W/nnUNet_results/replicate_4/Dataset520_HC18/nnUNetTrainer_1000iters__nnUNetPlans__2d \\
        --stock_test W/predictions/replicate_4/stock --control W/predictions/replicate_4/stock_seed_ensemble \\
        --partner W/predictions/replicate_5/stock
    .venv/bin/python benchmarks/sample_count_study.py --dataset hc18 --report --pool block r4_block r5_block

Predictions are kept under ``<work>/sample_count``, one folder per diffusion model (a finished run is not repeated,
also not when the model is paired with another stock model under another tag); results merge into
docs/results/sample_count_<dataset>.csv (test Dice per tag, K, weight and case) and sample_count_<dataset>.json
(the validation table and choice of each tag, and the report).
"""

import argparse
import functools
import json
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import DATASETS, REPO, STEPS, log, prepared_error, run, test_cases  # noqa: E402
from evidence_report import paired  # noqa: E402

from nnunetv2_diffusion.inference.ensemble_choice import (  # noqa: E402
    DEFAULT_ENSEMBLE_WEIGHT,
    WEIGHTS,
    best_weight,
    case_dice_by_weight,
    foreground_dice,
)

SAMPLE_COUNTS = (1, 2, 4, 8)


def results_paths(key: str) -> tuple[str, str]:
    folder = os.path.join(REPO, "docs", "results")
    return os.path.join(folder, f"sample_count_{key}.csv"), os.path.join(folder, f"sample_count_{key}.json")


def validation_images(spec: dict, work: str) -> tuple[str, list[str]]:
    """A folder of links to fold 0's validation images (nnU-Net's split) and the case names."""
    raw = os.path.join(work, "nnUNet_raw", spec["name"])
    split = json.load(open(os.path.join(work, "nnUNet_preprocessed", spec["name"], "splits_final.json")))[0]["val"]
    folder = os.path.join(work, "sample_count", "validation_images")
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(os.path.join(raw, "imagesTr")):
        if name.rsplit("_", 1)[0] in split and not os.path.lexists(os.path.join(folder, name)):
            os.symlink(os.path.join(raw, "imagesTr", name), os.path.join(folder, name))
    return folder, sorted(split)


def predict_samples(work: str, model: str, images: str, out: str, samples: int, device: str) -> None:
    """Every sample's exported probabilities of the study's DDPM sampling (STEPS steps, seed 0, no mirroring)."""
    marker = os.path.join(out, "finished.json")
    if os.path.isfile(marker):
        return
    results, dataset = os.path.dirname(os.path.dirname(model)), os.path.basename(os.path.dirname(model))
    trainer, plans, configuration = os.path.basename(model).split("__")
    env = {**os.environ, "nnUNet_raw": os.path.join(work, "nnUNet_raw"), "nnUNet_results": results,
           "nnUNet_preprocessed": os.path.join(work, "nnUNet_preprocessed"), "nnUNet_compile": "f",
           "nnUNet_n_proc_DA": "0"}
    start = time.time()
    run(["nnUNetv2_predict_diffusion", "-d", dataset, "-tr", trainer, "-p", plans, "-c", configuration, "-f", "0",
         "--sampler", "ddpm", "--steps", str(STEPS), "--seed", "0", "--num_samples", str(samples), "--save_samples",
         "--save_probabilities", "--disable_tta", "-npp", "1", "-nps", "1", "-device", device, "-i", images,
         "-o", out], env)
    json.dump({"seconds": time.time() - start, "samples": samples}, open(marker, "w"))


def prediction_root(work: str, model: str) -> str:
    """Where a diffusion model's sample predictions are kept: one folder per model, whichever stock model it is
    ensembled with, so that pairing it with a second stock model predicts nothing again."""
    return os.path.join(work, "sample_count", os.path.relpath(model, work).replace(os.sep, "__"))


def means_of_first_samples(folder: str, case: str, counts=SAMPLE_COUNTS) -> dict[int, np.ndarray]:
    """{k: the mean of the first k samples' exported probabilities of one case} for every k in ``counts``, float32
    (C, *spatial); each sample file is read once."""
    means, total = {}, None
    for k in range(1, max(counts) + 1):
        p = np.load(os.path.join(folder, "samples", f"{case}_sample{k}.npz"))["probabilities"].astype(np.float32)
        total = p if total is None else total + p
        if k in counts:
            means[k] = total / k
    return means


def dice_table(folder: str, stock_probabilities: dict[str, str], references: dict[str, np.ndarray],
               label_manager) -> dict[int, dict[float, np.ndarray]]:
    """{K: {w: per-case Dice (cases,), mean over labels}} of the ensembles of the K-sample mean, cases in
    ``references`` order."""
    table = {k: {w: [] for w in WEIGHTS} for k in SAMPLE_COUNTS}
    for case, reference in references.items():
        p_stock = np.load(stock_probabilities[case])["probabilities"].astype(np.float32)
        for k, p_diffusion in means_of_first_samples(folder, case).items():
            for w, dice in case_dice_by_weight(p_diffusion, p_stock, reference, label_manager).items():
                table[k][w].append(np.nanmean(dice))
    return {k: {w: np.asarray(v) for w, v in by_weight.items()} for k, by_weight in table.items()}


def choose(validation: dict[int, dict[float, np.ndarray]]) -> dict:
    """Per K the best weight (``nnUNetv2_diffusion_choose_ensemble``'s rule: ties go to the weight nearest 0.5), and
    the best (K, w) overall (ties: the smaller K)."""
    weight = {k: best_weight({w: float(np.mean(dice)) for w, dice in by_weight.items()})
              for k, by_weight in validation.items()}
    best = max(SAMPLE_COUNTS, key=lambda k: (round(float(np.mean(validation[k][weight[k]])), 10), -k))
    return {"weight_by_samples": {str(k): w for k, w in weight.items()}, "samples": best, "weight": weight[best],
            "validation_dice": {str(k): {"diffusion_alone": float(np.mean(validation[k][0.0])),
                                         "ensemble": float(np.mean(validation[k][weight[k]]))} for k in SAMPLE_COUNTS},
            "stock_alone": float(np.mean(validation[1][1.0]))}


def study(spec: dict, work: str, tag: str, model: str, stock: str, stock_test: str, control: str | None,
          partner: str | None, device: str) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.load(open(os.path.join(model, "dataset.json")))
    plans = PlansManager(os.path.join(model, "plans.json"))
    label_manager = plans.get_label_manager(dataset_json)
    out = prediction_root(work, model)
    images, validation_cases = validation_images(spec, work)
    test_references, ending, reader, _ = test_cases(spec, work)
    test_images = os.path.join(work, "nnUNet_raw", spec["name"], "imagesTs")
    for split, folder in (("validation", images), ("test", test_images)):
        predict_samples(work, model, folder, os.path.join(out, split), max(SAMPLE_COUNTS), device)

    gt = os.path.join(work, "nnUNet_preprocessed", spec["name"], "gt_segmentations")
    validation_refs = {c: reader.read_seg(os.path.join(gt, c + ending))[0] for c in validation_cases}
    stock_validation = {c: os.path.join(stock, "fold_0", "validation", c + ".npz") for c in validation_cases}
    validation = dice_table(os.path.join(out, "validation"), stock_validation, validation_refs, label_manager)
    choice = choose(validation)
    log(f"{tag}: validation choice K = {choice['samples']}, w = {choice['weight']}: {choice['validation_dice']}")

    test_refs = {os.path.basename(r)[: -len(ending)]: reader.read_seg(r)[0] for r in test_references}
    stock_test_files = {c: os.path.join(stock_test, c + ".npz") for c in test_refs}
    test = dice_table(os.path.join(out, "test"), stock_test_files, test_refs, label_manager)
    rows = []
    for k in SAMPLE_COUNTS:
        # "average": the plain mean, as the seed-ensemble control averages its two stock models
        for kind, w in (("diffusion", 0.0), ("ensemble", choice["weight_by_samples"][str(k)]),
                        ("average", DEFAULT_ENSEMBLE_WEIGHT)):
            rows += [{"tag": tag, "kind": kind, "samples": k, "weight": w, "case": c, "dice": float(d)}
                     for c, d in zip(test_refs, test[k][w], strict=True)]
    rows += [{"tag": tag, "kind": "stock", "samples": 0, "weight": 1.0, "case": c, "dice": float(d)}
             for c, d in zip(test_refs, test[1][1.0], strict=True)]
    score = functools.partial(segmentation_dice, reader=reader, label_manager=label_manager)
    if control:
        rows += [{"tag": tag, "kind": "control", "samples": 0, "weight": "", "case": c,
                  "dice": score(os.path.join(control, c + ending), reference)} for c, reference in test_refs.items()]
    # how much the members of each ensemble disagree: an average gains only where its members differ
    samples = os.path.join(out, "test", "samples")
    members = {"diffusion sample 1 vs sample 2": (f"{samples}/{{}}_sample1{ending}", f"{samples}/{{}}_sample2{ending}"),
               "diffusion sample 1 vs stock": (f"{samples}/{{}}_sample1{ending}", f"{stock_test}/{{}}{ending}")}
    if partner:
        members["stock vs its seed-ensemble partner"] = (f"{stock_test}/{{}}{ending}", f"{partner}/{{}}{ending}")
    agreement = {name: float(np.mean([score(a.format(c), reader.read_seg(b.format(c))[0]) for c in test_refs]))
                 for name, (a, b) in members.items()}
    record = {**choice, "model": model, "stock": stock, "stock_test": stock_test, "control": control,
              "partner": partner, "test_agreement_dice": agreement,
              "validation_cases": len(validation_cases), "test_cases": len(test_refs),
              "seconds": {split: json.load(open(os.path.join(out, split, "finished.json")))["seconds"]
                          for split in ("validation", "test")}}
    save(spec["key"], tag, rows, record)


def segmentation_dice(path: str, reference: np.ndarray, reader, label_manager) -> float:
    """Foreground Dice (nnU-Net's convention, mean over labels or regions) of the segmentation file at ``path``
    against a label map of the same shape."""
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    return float(np.nanmean(foreground_dice(reader.read_seg(path)[0], reference, labels, label_manager.ignore_label)))


def save(key: str, tag: str, rows: list[dict], record: dict) -> None:
    """Replaces this tag's rows and record in the committed files, keeping the other tags'."""
    csv_path, json_path = results_paths(key)
    frame = pd.DataFrame(rows)
    if os.path.isfile(csv_path):
        kept = pd.read_csv(csv_path)
        frame = pd.concat([kept[kept.tag != tag], frame], ignore_index=True)
    frame.to_csv(csv_path, index=False)
    summary = json.load(open(json_path)) if os.path.isfile(json_path) else {"tags": {}}
    summary["tags"][tag] = record
    json.dump(summary, open(json_path, "w"), indent=1)


def test_dice(rows: pd.DataFrame, kind: str, samples: int = 0) -> pd.Series:
    """Per-case test Dice of one kind of prediction (diffusion, ensemble, average, stock, control) and sample
    count."""
    return rows[(rows.kind == kind) & (rows.samples == samples)].set_index("case")["dice"]


def tag_series(rows: pd.DataFrame, record: dict) -> dict[str, pd.Series]:
    """Per-case test Dice of everything one tag predicted: stock, diffusion_K<k>, ensemble_K<k> (at the weight chosen
    for k), average_K<k> (w = 0.5), "chosen ensemble" (the validation-chosen K) and the control."""
    series = {"stock": test_dice(rows, "stock")}
    for k in SAMPLE_COUNTS:
        series.update({f"{kind}_K{k}": test_dice(rows, kind, k) for kind in ("diffusion", "ensemble", "average")})
    series["chosen ensemble"] = series[f"ensemble_K{record['samples']}"]
    if (rows.kind == "control").any():
        series["control"] = test_dice(rows, "control")
    return series


COMPARISONS = (("chosen ensemble", "ensemble_K1"), ("chosen ensemble", "stock"), ("chosen ensemble", "control"),
               ("ensemble_K1", "control"), ("average_K1", "control"), ("average_K1", "stock"),
               (f"diffusion_K{max(SAMPLE_COUNTS)}", "diffusion_K1"), ("diffusion_K1", "stock"))


def summarise(series: dict[str, pd.Series]) -> dict:
    """Mean test Dice of each prediction and the paired Wilcoxon tests of COMPARISONS (where both exist)."""
    return {"test_dice": {name: float(values.mean()) for name, values in series.items()},
            "paired": {f"{a} vs {b}": paired(series[a], series[b]) for a, b in COMPARISONS
                       if a in series and b in series}}


def report(key: str, pools: dict[str, list[str]] | None = None) -> dict:
    """Test Dice per tag and K (one sample vs the average, alone and in the ensemble) and the paired tests of the
    validation-chosen ensemble and the plain average against the K = 1 ensemble, stock and the control; and per pool
    (a name and its tags; given ones are kept in the JSON file for later reports) the same over the per-case Dice
    averaged over its tags. Written into the JSON file."""
    csv_path, json_path = results_paths(key)
    frame, summary = pd.read_csv(csv_path), json.load(open(json_path))
    series = {tag: tag_series(frame[frame.tag == tag], record) for tag, record in summary["tags"].items()}
    result = {tag: {"chosen": {"samples": record["samples"], "weight": record["weight"]},
                    "test_agreement_dice": record.get("test_agreement_dice"), **summarise(series[tag])}
              for tag, record in sorted(summary["tags"].items())}
    summary["pools"] = {**summary.get("pools", {}), **(pools or {})}
    for name, tags in summary["pools"].items():
        missing = [t for t in tags if t not in series]
        if missing:
            raise SystemExit(f"pool {name}: no results for tags {missing}")
        shared = set.intersection(*(set(series[t]) for t in tags))
        pooled = {n: pd.concat([series[t][n] for t in tags], axis=1).mean(axis=1) for n in sorted(shared)}
        result[f"pool {name}"] = {"tags": tags, **summarise(pooled)}
    summary["report"] = result
    json.dump(summary, open(json_path, "w"), indent=1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hc18")
    parser.add_argument("--work", default=os.path.join(REPO, "benchmark_data", "evidence"))
    parser.add_argument("--tag", help="name of this model's results (e.g. r4_block)")
    parser.add_argument("-m", help="diffusion model folder")
    parser.add_argument("--ensemble_with", help="stock model folder (its fold_0/validation has .npz)")
    parser.add_argument("--stock_test", help="prediction folder of the stock model on the test images, with .npz")
    parser.add_argument("--control", default=None, help="prediction folder scored beside (e.g. the seed-ensemble)")
    parser.add_argument("--partner", default=None,
                        help="test prediction folder of the second stock model of the seed-ensemble: how much the two "
                             "stock models disagree is reported beside how much the diffusion samples do")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", action="store_true", help="only tabulate the tags already run")
    parser.add_argument("--pool", nargs="+", action="append", default=[], metavar=("NAME", "TAG"),
                        help="report also the per-case Dice averaged over these tags, under NAME (repeatable)")
    args = parser.parse_args()
    spec = {**DATASETS[args.dataset], "key": args.dataset}
    work = os.path.abspath(os.path.join(args.work, args.dataset))
    if not args.report:
        if not (args.tag and args.m and args.ensemble_with and args.stock_test):
            parser.error("--tag, -m, --ensemble_with and --stock_test are required unless --report")
        if problem := prepared_error(spec, work):
            parser.error(problem)
        study(spec, work, args.tag, os.path.abspath(args.m), os.path.abspath(args.ensemble_with),
              os.path.abspath(args.stock_test), args.control and os.path.abspath(args.control),
              args.partner and os.path.abspath(args.partner), args.device)
    pools = {}
    for name, *tags in args.pool:
        if not tags:
            parser.error(f"--pool {name}: name the tags to pool")
        pools[name] = tags
    print(json.dumps(report(args.dataset, pools), indent=1))


if __name__ == "__main__":
    main()
