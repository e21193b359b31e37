"""How good is the uncertainty? Diffusion samples (K = 1, 4, 8) against stock nnU-Net's softmax, with and without a
temperature fitted on the validation cases, on the test split of the evidence study.

Uses the models that ``benchmarks/evidence_study.py`` trained (one replicate: stock ``nnUNetTrainer_1000iters`` and
block-conditioned recycling ``nnUNetTrainerDiffRecycle_blockFiLM_1000iters``), so run that study's training first:

    .venv/bin/python benchmarks/uncertainty_study.py --dataset hippocampus
    .venv/bin/python benchmarks/uncertainty_study.py --dataset hc18 --stage metrics

Stages (each kept under <work>/uncertainty and skipped when done): ``predict`` (stock with mirroring and saved
probabilities; the diffusion model once with the largest ``--num_samples K``, DDPM 5 steps, no mirroring, seed 0,
``--save_samples``: sample k's noise does not depend on K, so the mean of its first k samples is the K = k
prediction, and one run gives every K), ``metrics`` (ECE
over all voxels and over a 2-voxel band around the reference boundary, Brier, NLL, voxel AUROC of the predictive
entropy (and, for K > 1, of the mutual information of the samples) for the segmentation's errors, and the Spearman
correlation over cases of the case score with 1 - Dice). Seconds per case of K = 1, 4, 8 alone come from
benchmarks/sample_batch_speed.py.
Temperature: fitted by NLL on the stock model's final-validation probabilities (nnU-Net's, with mirroring), never on
test cases. Writes docs/results/uncertainty.json (the metrics per dataset and method),
docs/results/uncertainty_details.json (temperature, seconds per case, reliability curves),
docs/uncertainty_<dataset>_reliability.png and docs/uncertainty_<dataset>_maps.png.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import DATASETS, REPO, log, model_folder, nnunet_env, prepared_error, run, test_cases  # noqa: E402
from calibration_metrics import CalibrationAccumulator, fit_temperature, temperature_scaled  # noqa: E402
from evidence_study import METHODS  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from nnunetv2_diffusion.inference.ensemble_choice import foreground_dice  # noqa: E402
from nnunetv2_diffusion.inference.uncertainty import case_scores, entropy_of_probabilities  # noqa: E402

SAMPLES = (1, 4, 8)
RESULTS = os.path.join(REPO, "docs", "results", "uncertainty.json")
DETAILS = os.path.join(REPO, "docs", "results", "uncertainty_details.json")


def predict(spec: dict, work: str, replicate: int, device: str, samples: int, sample_batch: int) -> dict:
    """Prediction folders: ``stock`` and ``diffusion`` (``samples`` samples, each saved); seconds per case of each
    run in ``<folder>/finished.json``."""
    env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": "0"}
    images = os.path.join(env["nnUNet_raw"], spec["name"], "imagesTs")
    common = ["-d", str(spec["id"]), "-c", spec["configuration"], "-f", "0", "-device", device, "-npp", "1", "-nps",
              "1", "-i", images, "--save_probabilities"]
    jobs = {"stock": ["nnUNetv2_predict", "-tr", METHODS["stock"]["trainer"]],
            "diffusion": ["nnUNetv2_predict_diffusion", "-tr", METHODS["recycling_block"]["trainer"], "--sampler",
                          "ddpm", "--steps", "5", "--seed", "0", "--num_samples", str(samples), "--save_samples",
                          "--sample_batch", str(sample_batch), "--disable_tta"]}
    folders = {}
    for method, command in jobs.items():
        name = method if method == "stock" else f"diffusion_k{samples}_samples"
        out = folders[method] = os.path.join(work, "uncertainty", f"replicate_{replicate}", name)
        marker = os.path.join(out, "finished.json")
        if not os.path.isfile(marker):
            start = time.time()
            run([*command, *common, "-o", out], env)
            cases = len(glob.glob(os.path.join(out, "*.npz")))
            json.dump({"seconds": time.time() - start, "cases": cases}, open(marker, "w"))
    return folders


def _probabilities(path: str) -> np.ndarray:
    return np.load(path)["probabilities"].astype(np.float32)


def stock_temperature(spec: dict, work: str, replicate: int) -> float:
    """NLL-optimal temperature of the stock model on its fold-0 final-validation probabilities."""
    env = nnunet_env(work, replicate)
    validation = os.path.join(model_folder(env, spec, METHODS["stock"]["trainer"]), "fold_0", "validation")
    gt = os.path.join(env["nnUNet_preprocessed"], spec["name"], "gt_segmentations")
    _, ending, reader, _ = test_cases(spec, work)
    files = sorted(glob.glob(os.path.join(validation, "*.npz")))
    if not files:
        raise SystemExit(f"{validation} has no probabilities: train the stock model with --npz (evidence_study.py)")
    references = [reader.read_seg(os.path.join(gt, os.path.basename(f)[:-4] + ending))[0][0] for f in files]
    return fit_temperature([_probabilities(f) for f in files], references)


def _saved_samples(folders: dict, case: str, k: int) -> list[np.ndarray]:
    """The first k saved samples' probabilities of one test case, as exported."""
    return [_probabilities(os.path.join(folders["diffusion"], "samples", f"{case}_sample{i}.npz"))
            for i in range(1, k + 1)]


def case_probabilities(folders: dict, case: str, method: str, temperature: float, samples: int):
    """(probabilities (C, *spatial), mutual information (*spatial) or None) of one test case for one method:
    ``stock``, ``stock_temperature`` or ``diffusion_k<k>``, the mean of the first k saved samples (k = ``samples``:
    the run's own export) and their mutual information, computed here in the exported geometry."""
    if method.startswith("stock"):
        p = _probabilities(os.path.join(folders["stock"], case + ".npz"))
        return (temperature_scaled(p, temperature) if method == "stock_temperature" else p), None
    k = int(method[len("diffusion_k"):])
    drawn = _saved_samples(folders, case, k)
    mean = np.mean(drawn, 0)
    p = _probabilities(os.path.join(folders["diffusion"], case + ".npz")) if k == samples else mean
    if k == 1:
        return p, None
    mean_entropy = np.mean([entropy_of_probabilities(d) for d in drawn], 0)
    return p, np.maximum(entropy_of_probabilities(mean) - mean_entropy, 0)


def metrics(spec: dict, work: str, folders: dict, temperature: float, ks: list[int]) -> dict:
    """Per method: the metrics of the module docstring; ``error_auroc`` is that of the predictive entropy."""
    references, ending, reader, labels = test_cases(spec, work)
    methods = ["stock", "stock_temperature", *(f"diffusion_k{k}" for k in ks)]
    results, reliability = {}, {}
    dataset_labels = json.load(open(os.path.join(work, "nnUNet_raw", spec["name"], "dataset.json")))["labels"]
    for method in methods:
        accumulator, scores, losses = CalibrationAccumulator(), [], []
        for reference_file in references:
            case = os.path.basename(reference_file)[: -len(ending)]
            reference = reader.read_seg(reference_file)[0][0]
            p, mutual_information = case_probabilities(folders, case, method, temperature, max(ks))
            maps = {"entropy": entropy_of_probabilities(p)}
            if mutual_information is not None:
                maps["mutual_information"] = mutual_information
            accumulator.add(p, reference, **maps)
            segmentation = p.argmax(0)
            row = case_scores(segmentation, p, dataset_labels, 1.0)
            scores.append(np.nanmean([row[k] for k in row if k.endswith("_uncertainty")]))
            losses.append(1 - np.nanmean(foreground_dice(segmentation, reference, labels)))
        summary = accumulator.summary()
        summary["error_auroc"] = summary.pop("error_auroc_entropy")
        results[method] = {**summary, "case_spearman": float(spearmanr(scores, losses).statistic),
                           "test_dice": float(np.mean([1 - loss for loss in losses]))}
        reliability[method] = {part: accumulator.reliability(part) for part in ("all", "band")}
        log(f"{method}: {json.dumps({k: round(v, 4) for k, v in results[method].items()})}")
    return {"methods": results, "reliability": reliability}


def export_consistency(spec: dict, work: str, folders: dict, samples: int) -> float:
    """Largest |mean of the exported samples - the exported mean| over test voxels: 0 up to rounding where the export
    does not resample (nnU-Net resamples logits before the softmax), so the smaller K are then exact."""
    references, ending, _, _ = test_cases(spec, work)
    largest = 0.0
    for reference_file in references:
        case = os.path.basename(reference_file)[: -len(ending)]
        mean = np.mean(_saved_samples(folders, case, samples), 0)
        exported = _probabilities(os.path.join(folders["diffusion"], case + ".npz"))
        largest = max(largest, float(np.abs(mean - exported).max()))
    return largest


def _plot(key: str, reliability: dict, spec: dict, work: str, folders: dict, samples: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [os.path.join(REPO, "docs", f"uncertainty_{key}_reliability.png")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, part in zip(axes, ("all", "band"), strict=True):
        ax.plot([0, 1], [0, 1], ":", color="0.5")
        for method, curves in reliability.items():
            ax.plot(curves[part]["confidence"], curves[part]["accuracy"], "-o", markersize=3, label=method)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{key}: {'all voxels' if part == 'all' else 'boundary band (2 voxels)'}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    references, ending, reader, _ = test_cases(spec, work)
    case = os.path.basename(references[0])[: -len(ending)]
    reference = reader.read_seg(references[0])[0][0]
    image = reader.read_images([os.path.join(work, "nnUNet_raw", spec["name"], "imagesTs", f"{case}_0000{ending}")])[
        0][0]
    index = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))  # slice with most foreground
    k = samples
    stock = _probabilities(os.path.join(folders["stock"], case + ".npz"))
    diffusion, mutual_information = case_probabilities(folders, case, f"diffusion_k{k}", 1.0, k)
    panels = [("image", image[index], "gray"), ("reference", reference[index], "viridis"),
              (f"diffusion K={k} prediction", diffusion.argmax(0)[index], "viridis"),
              ("stock entropy", entropy_of_probabilities(stock)[index], "magma"),
              (f"diffusion K={k} entropy", entropy_of_probabilities(diffusion)[index], "magma")]
    if mutual_information is not None:
        panels.append((f"diffusion K={k} mutual information", mutual_information[index], "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, array, cmap) in zip(axes, panels, strict=True):
        ax.imshow(array, cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    paths.append(os.path.join(REPO, "docs", f"uncertainty_{key}_maps.png"))
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return [os.path.relpath(p, REPO) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("hc18", "hippocampus"), default="hippocampus")
    parser.add_argument("--work", default=os.path.join(REPO, "benchmark_data", "evidence"))
    parser.add_argument("--replicate", type=int, default=0)
    parser.add_argument("--stage", choices=("all", "predict", "metrics"), default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, nargs="+", default=list(SAMPLES),
                        help="the K to measure (one run draws the largest)")
    parser.add_argument("--sample_batch", type=int, default=None,
                        help="samples run together (default: all of them; docs/uncertainty.md, 'Cost')")
    args = parser.parse_args()
    spec = {**DATASETS[args.dataset], "key": args.dataset}
    work = os.path.join(os.path.abspath(args.work), args.dataset)
    if problem := prepared_error(spec, work):
        parser.error(problem)
    samples = max(args.samples)
    folders = predict(spec, work, args.replicate, args.device, samples, args.sample_batch or samples)
    if args.stage == "predict":
        return
    temperature = stock_temperature(spec, work, args.replicate)
    log(f"stock temperature fitted on validation: {temperature:.3f}")
    measured = metrics(spec, work, folders, temperature, sorted(set(args.samples)))
    consistency = export_consistency(spec, work, folders, samples)
    log(f"largest |mean of exported samples - exported mean|: {consistency:.2e}")
    timing = {m: json.load(open(os.path.join(f, "finished.json"))) for m, f in folders.items()}
    for path, entry in ((RESULTS, measured["methods"]), (DETAILS, {
            "stock_temperature": temperature, "replicate": args.replicate,
            "test_cases": len(test_cases(spec, work)[0]),
            "seconds_per_case": {m: t["seconds"] / max(t["cases"], 1) for m, t in timing.items()},
            "samples_drawn": samples, "sample_batch": args.sample_batch or samples,
            "largest_sample_mean_vs_export_difference": consistency,
            "reliability": measured["reliability"],
            "plots": _plot(args.dataset, measured["reliability"], spec, work, folders, samples)})):
        results = json.load(open(path)) if os.path.isfile(path) else {}
        results[args.dataset] = entry
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {path}")

if __name__ == "__main__":
    main()
