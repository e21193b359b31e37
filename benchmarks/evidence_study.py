"""What the diffusion part adds: stock nnU-Net, a stock seed-ensemble, recycling with either timestep conditioning,
warm-started recycling (with stock trained as long as its total as the control) and the validation-weighted
ensembles, at >= 1000 iterations, with replicates; and a budget curve of stock vs recycling and their ensemble.

Resumable and in stages: every finished training (nnU-Net's ``--c`` continues an interrupted one), prediction and
evaluation is kept under --work and skipped when run again, so the study can be stopped and continued at any point.

    .venv/bin/python benchmarks/evidence_study.py --dataset hc18 --replicates 2
    .venv/bin/python benchmarks/evidence_study.py --dataset hippocampus --replicates 3 --stage train
    .venv/bin/python benchmarks/evidence_study.py --dataset hippocampus --stage budget_curve --budgets 300
    .venv/bin/python benchmarks/evidence_study.py --dataset hippocampus --stage budget_curve --budgets 3000 \
        --budget_stock_replicates 2   # + a second stock model and the seed-ensemble control
    .venv/bin/python benchmarks/evidence_study.py --dataset hippocampus --stage budget_curve --budgets 3000 \
        --budget_replicates 2   # another replicate, numbered after the committed ones
    .venv/bin/python benchmarks/evidence_study.py --dataset hippocampus --stage budget_curve --budgets 5000 \
        --budget_replicates 6 --budget_stock_replicates 2   # the longest CPU point, 100 epochs each (then 7, 8, 10, 12)
    .venv/bin/python benchmarks/evidence_study.py --dataset hc18 --stage budget_curve --budgets 2000 \
        --budget_stock_replicates 2   # HC18's larger point: its iterations cost about 4x Hippocampus's on the CPU
    .venv/bin/python benchmarks/evidence_study.py --dataset hc18 --only_replicates 1   # one more, after a lost work

``--only_replicates`` works on the named replicates alone: their results join the committed ones of the others.

Protocol: the dataset's plans, fixed split and test cases of benchmarks/paper_claims.py; every model trained with
``--npz`` so its final validation keeps probabilities, from which the ensemble weight is chosen
(``nnUNetv2_diffusion_choose_ensemble``) before any test case is predicted. No test-time mirroring (CPU budget);
diffusion models sampled with DDPM and DDIM (eta 0), 5 steps, every step evaluated; Dice from nnU-Net's evaluator and
HD95 per case; paired Wilcoxon tests over test cases (per-case values averaged over replicates).
Outputs: docs/results/evidence_<dataset>_cases.csv and _models.json, for the budget curve
docs/results/evidence_<dataset>_budget_curve.csv and _budget_curve_models.json, docs/results/evidence.json,
docs/evidence_<dataset>_*.png.
"""

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import (  # noqa: E402
    DATASETS,
    REPO,
    SAMPLERS,
    STEPS,
    evaluate_prediction_folder,
    is_trained,
    log,
    model_folder,
    nnunet_env,
    prediction_folder,
    prepare,
    prepared_error,
    run,
    test_cases,
    write_rows,
)

from nnunetv2_diffusion.checkpoint_io import load_checkpoint_file  # noqa: E402
from nnunetv2_diffusion.inference.ensemble_choice import read_ensemble_choice  # noqa: E402

METHODS = {  # name: trainer (full class name), and the method whose final checkpoint it starts from
    "stock": {"trainer": "nnUNetTrainer_1000iters"},
    "recycling_stage": {"trainer": "nnUNetTrainerDiffRecycle_1000iters"},
    "recycling_block": {"trainer": "nnUNetTrainerDiffRecycle_blockFiLM_1000iters"},
    "recycling_warm": {"trainer": "nnUNetTrainerDiffRecycle_blockFiLM_warm300iters", "pretrained": "stock"},
    # the warm start's equal-total-budget control: stock trained as long as stock + its fine-tuning
    "stock_1300": {"trainer": "nnUNetTrainer_1300iters"},
}
STOCK_METHODS = ("stock", "stock_1300")
DIFFUSION_METHODS = [m for m in METHODS if m not in STOCK_METHODS]
ITERATIONS = {"stock": 1000, "recycling_stage": 1000, "recycling_block": 1000, "recycling_warm": 1000 + 300,
              "stock_1300": 1300}
# budget curve: the stock and 'block' recycling trainer of each budget; its 1000-iteration point is the main study's,
# 5000 is the GPU run's (benchmarks/gpu_evidence_hc18.sh) and Hippocampus's longest CPU point, 10 the GPU
# script's smoke run
BUDGET_CURVE = {n: (f"nnUNetTrainer_{n}iters", f"nnUNetTrainerDiffRecycle_blockFiLM_{n}iters")
                for n in (10, 300, 2000, 3000, 5000)}


def training_order(replicates: list[int], methods: tuple[str, ...] = tuple(METHODS)) -> list[tuple[str, int]]:
    """(method, replicate) in the order that answers the most questions if the study is cut short: stock and the
    best-guess recycling model for every replicate first (replicates, and with them the stock seed-ensemble
    control, are what the claims need), then warm-started recycling, 'stage' recycling and stock at 1300."""
    order = [(m, r) for r in replicates for m in ("stock", "recycling_block")]
    order += [(m, r) for m in ("recycling_warm", "recycling_stage", "stock_1300") for r in replicates]
    return [(m, r) for m, r in order if m in methods]


def _timed(marker: str, function, *arguments) -> None:
    """Runs ``function(*arguments)`` unless ``marker`` (a JSON file with its wall time) exists, then writes it."""
    if os.path.isfile(marker):
        return
    start = time.time()
    function(*arguments)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    record_seconds(marker, start)


def train_model(spec: dict, work: str, trainer: str, replicate: int, device: str, pretrained: str | None = None):
    """One nnUNetv2_train run (fold 0, validation probabilities kept); continues an interrupted run with --c."""
    env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
    folder = model_folder(env, spec, trainer)
    if is_trained(env, spec, trainer):
        return
    command = ["nnUNetv2_train", str(spec["id"]), spec["configuration"], "0", "-tr", trainer, "-device", device,
               "--npz"]
    latest = os.path.join(folder, "fold_0", "checkpoint_latest.pth")
    earlier = 0.0  # seconds of the epochs an interrupted run already trained (its own marker was never written)
    if os.path.isfile(latest):
        command.append("--c")
        earlier = trained_epoch_seconds(latest)
    elif pretrained is not None:
        command += ["-pretrained_weights", pretrained]
    start = time.time()
    run(command, env)
    record_seconds(os.path.join(folder, "fold_0", "study_training_time.json"), start - earlier,
                   continued="--c" in command, seconds_before_continue=round(earlier))


def trained_epoch_seconds(checkpoint: str) -> float:
    """Seconds the epochs saved in an nnU-Net ``checkpoint`` took, from its logger's epoch start and end times: what
    a ``--c`` continuation adds to its own wall time for the whole training's (less the interrupted run's start-up and
    the partial epoch it lost)."""
    logged = load_checkpoint_file(checkpoint)["logging"]
    return sum(end - begin for begin, end in zip(logged["epoch_start_timestamps"], logged["epoch_end_timestamps"],
                                                 strict=True))


def record_seconds(marker: str, start: float, **details) -> None:
    """Writes a marker JSON: the wall time since ``start`` (``time.time()``) and ``details``; read by
    :func:`recorded_seconds`."""
    with open(marker, "w") as f:
        json.dump({"seconds": time.time() - start, **details}, f)


def recorded_seconds(marker: str) -> int | None:
    """The wall time in seconds a marker JSON records (``_timed``'s ``finished.json``, ``train_model``'s
    ``study_training_time.json``), rounded; None when there is no marker."""
    return round(json.load(open(marker))["seconds"]) if os.path.isfile(marker) else None


def training_seconds(fold: str) -> int | None:
    """The wall time train_model recorded for ``<model folder>/fold_0``, or None (not trained by the study)."""
    return recorded_seconds(os.path.join(fold, "study_training_time.json"))


def train(spec: dict, work: str, replicates: list[int], device: str, methods: tuple[str, ...]) -> None:
    for method, replicate in training_order(replicates, methods):
        pretrained = None
        if "pretrained" in METHODS[method]:
            env = nnunet_env(work, replicate)
            source = METHODS[method]["pretrained"]
            if not is_trained(env, spec, METHODS[source]["trainer"]):
                log(f"skipping {method} replicate {replicate}: {source} not trained yet")
                continue
            pretrained = os.path.join(model_folder(env, spec, METHODS[source]["trainer"]), "fold_0",
                                      "checkpoint_final.pth")
        train_model(spec, work, METHODS[method]["trainer"], replicate, device, pretrained)


def choose_ensembles(spec: dict, work: str, replicates: list[int]) -> None:
    """The ensemble weight of each recycling model with its replicate's stock model, from validation only."""
    for replicate in replicates:
        env = nnunet_env(work, replicate)
        stock = model_folder(env, spec, METHODS["stock"]["trainer"])
        for method in DIFFUSION_METHODS:
            folder = model_folder(env, spec, METHODS[method]["trainer"])
            if not (is_trained(env, spec, METHODS[method]["trainer"]) and is_trained(env, spec,
                                                                                     METHODS["stock"]["trainer"])):
                continue
            choose_ensemble(env, folder, stock)


def choose_ensemble(env: dict, folder: str, stock: str) -> None:
    """The ensemble weight of the diffusion model in ``folder`` with ``stock``, from their final validation's
    probabilities (skipped when already recorded in ``folder``)."""
    if read_ensemble_choice(folder, stock) is None:
        run(["nnUNetv2_diffusion_choose_ensemble", "-m", folder, "--ensemble_with", stock, "-f", "0"], env)


def diffusion_command(trainer: str, sampler: str, ensemble_with: str | None = None) -> list[str]:
    """nnUNetv2_predict_diffusion with the study's sampling (STEPS steps, seed 0); with ``ensemble_with`` and no
    --ensemble_weight, so that the predictor takes the weight chosen on validation from the model folder."""
    command = ["nnUNetv2_predict_diffusion", "-tr", trainer, "--sampler", sampler, "--steps", str(STEPS),
               "--seed", "0"]
    return command + (["--ensemble_with", ensemble_with] if ensemble_with else ["--save_steps"])


def predict(spec: dict, work: str, replicates: list[int], device: str, samplers: tuple[str, ...] = SAMPLERS) -> None:
    common = ["-d", str(spec["id"]), "-c", spec["configuration"], "-f", "0", "-device", device, "--disable_tta",
              "-npp", "1", "-nps", "1"]
    for replicate in replicates:
        env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": "0"}
        images = os.path.join(env["nnUNet_raw"], spec["name"], "imagesTs")
        stock_trainer = METHODS["stock"]["trainer"]
        jobs = []
        for method in STOCK_METHODS:
            if is_trained(env, spec, METHODS[method]["trainer"]):
                # stock's probabilities feed the seed-ensemble control
                jobs.append((method, None, ["nnUNetv2_predict", "-tr", METHODS[method]["trainer"],
                                            *(["--save_probabilities"] if method == "stock" else [])]))
        for method in DIFFUSION_METHODS:
            trainer = METHODS[method]["trainer"]
            if not is_trained(env, spec, trainer):
                continue
            jobs += [(method, sampler, diffusion_command(trainer, sampler)) for sampler in samplers]
            stock = model_folder(env, spec, stock_trainer)
            if read_ensemble_choice(model_folder(env, spec, trainer), stock):
                jobs.append((f"ensemble_{method}", "ddpm", diffusion_command(trainer, "ddpm", stock)))
        for method, sampler, command in jobs:
            out = prediction_folder(work, replicate, method, sampler)
            _timed(os.path.join(out, "finished.json"), run, [*command, *common, "-i", images, "-o", out], env)
    for replicate, partner in seed_ensemble_pairs(replicates):
        first, second = (prediction_folder(work, r, "stock", None) for r in (replicate, partner))
        if all(os.path.isfile(os.path.join(f, "finished.json")) for f in (first, second)):
            _seed_ensemble(nnunet_env(work, replicate), first, second,
                           prediction_folder(work, replicate, "stock_seed_ensemble", None))


def seed_ensemble_pairs(replicates: list[int]) -> list[tuple[int, int]]:
    """(replicate, partner) stock pairs of the seed-ensemble control, each unordered pair once: every replicate
    with the next in a cycle, so that three or more replicates give as many distinct pairs; two give one pair (the
    cycle would repeat it under the second replicate and count the same ensemble twice)."""
    if len(replicates) < 2:
        return []
    if len(replicates) == 2:
        return [(replicates[0], replicates[1])]
    return [(r, replicates[(i + 1) % len(replicates)]) for i, r in enumerate(replicates)]


def _seed_ensemble(env: dict, first: str, second: str, out: str) -> None:
    """Two stock replicates' softmax averaged by stock ``nnUNetv2_ensemble`` (same test cases, same weights).
    Which replicates were paired depends on how many exist, so the pair is recorded and a stale pair redone."""
    marker = os.path.join(out, "finished.json")
    pair = [os.path.abspath(first), os.path.abspath(second)]
    if os.path.isfile(marker) and json.load(open(marker)).get("pair") == pair:
        return
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = time.time()
    run(["nnUNetv2_ensemble", "-i", first, second, "-o", out, "-np", "1"], env)
    for name in os.listdir(out):  # the per-case exports only; nnUNetv2_ensemble copies its json files too
        if name.endswith(".npz"):
            os.remove(os.path.join(out, name))
    record_seconds(marker, start, pair=pair)


def evaluate(spec: dict, work: str, replicates: list[int]) -> str:
    """One CSV row per replicate, method, sampler, step, case and label (cached per prediction folder), merged into
    the committed CSV: the prediction folders of a session replace their own rows and leave the rest, so results of
    models trained in earlier sessions (whose folders are gone) stay."""
    references, ending, reader, labels = test_cases(spec, work)
    rows = []
    for replicate in replicates:
        root = os.path.join(work, "predictions", f"replicate_{replicate}")
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            folder = os.path.join(root, name)
            if not os.path.isfile(os.path.join(folder, "finished.json")):
                continue
            method, sampler = (name.rsplit("_", 1) if name.endswith(SAMPLERS) else (name, "-"))
            rows += evaluate_prediction_folder(folder, references, ending, reader, labels,
                                               {"replicate": replicate, "method": method, "sampler": sampler})
    path = os.path.join(REPO, "docs", "results", f"evidence_{spec['key']}_cases.csv")
    if rows:
        write_rows(_merged(path, rows, ("replicate", "method", "sampler")), path)
    record_models(spec, work, replicates)
    return path


def _merged(path: str, rows: list[dict], group: tuple[str, ...]) -> list[dict]:
    """``rows`` plus the rows of the CSV at ``path`` whose ``group`` values none of ``rows`` has."""
    if not os.path.isfile(path):
        return rows
    import csv

    fresh = {tuple(str(row[k]) for k in group) for row in rows}
    kept = [row for row in csv.DictReader(open(path)) if tuple(row[k] for k in group) not in fresh]
    return kept + rows


def record_models(spec: dict, work: str, replicates: list[int]) -> str:
    """docs/results/evidence_<dataset>_models.json: per method and replicate, the final-validation Dice (nnU-Net's
    summary.json), the training wall time and the ensemble weight chosen on validation; merged like the CSV."""
    path = os.path.join(REPO, "docs", "results", f"evidence_{spec['key']}_models.json")
    models = json.load(open(path)) if os.path.isfile(path) else {}
    for replicate in replicates:
        env = nnunet_env(work, replicate)
        stock = model_folder(env, spec, METHODS["stock"]["trainer"])
        for method, settings in METHODS.items():
            folder = model_folder(env, spec, settings["trainer"])
            record = model_record(folder, ITERATIONS[method], stock if method in DIFFUSION_METHODS else None)
            if record is not None:
                models.setdefault(method, {})[str(replicate)] = record
    with open(path, "w") as f:
        json.dump(models, f, indent=1, sort_keys=True)
    return path


def model_record(folder: str, iterations: int, stock: str | None = None) -> dict | None:
    """What a trained model folder says of itself: trainer, iterations, final-validation Dice (nnU-Net's
    summary.json), the study's training wall time and, given its ``stock`` partner, the ensemble weight chosen on
    validation. None before its final validation exists."""
    fold = os.path.join(folder, "fold_0")
    summary = os.path.join(fold, "validation", "summary.json")
    if not os.path.isfile(summary):
        return None
    record = {"trainer": os.path.basename(folder).split("__")[0], "iterations": iterations,
              "validation_dice": json.load(open(summary))["foreground_mean"]["Dice"]}
    seconds = training_seconds(fold)
    if seconds is not None:
        record["training_seconds"] = seconds
    choice = read_ensemble_choice(folder, stock) if stock is not None else None
    if choice is not None:
        record["ensemble_choice"] = choice
    return record


def budget_curve_models(replicates: list[int], stock_replicates: int = 1) -> list[tuple[str, int]]:
    """(model, replicate) of one budget in training order: per replicate r, stock r and 'block' recycling r (the two
    halves of ensemble r), then, with ``stock_replicates`` 2, stock r + 1, the seed-ensemble partner of stock r."""
    order = [(model, r) for r in replicates for model in ("stock", "recycling_block")]
    return order + ([("stock", r + 1) for r in replicates] if stock_replicates == 2 else [])


def budget_curve(spec: dict, work: str, device: str, budgets: list[int], replicates: list[int],
                 stock_replicates: int = 1, parallel: bool = False) -> str:
    """Stock vs block-conditioned recycling (DDPM) and their ensemble (weight chosen on validation) at the
    ``budgets`` of BUDGET_CURVE, trained, predicted and evaluated in ``<work>/budget_curve``, one replicate r of each
    per ``replicates``; with ``stock_replicates`` 2, also stock r + 1 and the seed-ensemble of stocks r and r + 1
    (recorded under r), the control of the ensemble. Each model is predicted as soon as it is trained, so a cut-short
    run keeps what finished; with ``parallel``, a budget's models are all trained at once first (a GPU that one 2d
    model leaves mostly idle; their wall times then overlap). Rows merged into
    docs/results/evidence_<dataset>_budget_curve.csv (the report adds the main study's 1000-iteration point)."""
    curve_work = os.path.join(work, "budget_curve")
    for source in ("nnUNet_raw", "nnUNet_preprocessed"):  # share the converted and preprocessed data
        target = os.path.join(curve_work, source)
        if not os.path.exists(target):
            os.makedirs(curve_work, exist_ok=True)
            os.symlink(os.path.join(work, source), target)
    models = budget_curve_models(replicates, stock_replicates)
    envs = {r: {**nnunet_env(curve_work, r), "nnUNet_n_proc_DA": "0"} for _, r in models}
    images = os.path.join(envs[replicates[0]]["nnUNet_raw"], spec["name"], "imagesTs")
    common = ["-d", str(spec["id"]), "-c", spec["configuration"], "-f", "0", "-device", device, "--disable_tta",
              "-npp", "1", "-nps", "1", "-i", images]
    test = test_cases(spec, work)
    rows = []
    for iterations in budgets:
        trainers = dict(zip(("stock", "recycling_block"), BUDGET_CURVE[iterations], strict=True))
        folders = {(model, r): model_folder(envs[r], spec, trainers[model]) for model, r in models}
        if parallel:
            with ThreadPoolExecutor(len(models)) as pool:
                for training in [pool.submit(train_model, spec, curve_work, trainers[m], r, device) for m, r in models]:
                    training.result()  # a failed training raises here
        for model, r in models:
            train_model(spec, curve_work, trainers[model], r, device)
            # (method, the models in it, command); stock keeps its probabilities for the seed-ensemble
            if model == "stock":
                jobs = [("stock", [folders[model, r]], ["nnUNetv2_predict", "-tr", trainers[model],
                                                        "--save_probabilities"])]
            else:
                stock = folders["stock", r]
                choose_ensemble(envs[r], folders[model, r], stock)
                jobs = [("recycling_block", [folders[model, r]], diffusion_command(trainers[model], "ddpm")),
                        ("ensemble_recycling_block", [folders[model, r], stock],
                         diffusion_command(trainers[model], "ddpm", stock))]
            for method, used, command in jobs:
                out = prediction_folder(curve_work, r, f"{method}_{iterations}", None)
                _timed(os.path.join(out, "finished.json"), run, [*command, *common, "-o", out], envs[r])
                rows += _curve_rows(out, test, used, iterations=iterations, method=method, replicate=r)
        for r in replicates if stock_replicates == 2 else []:
            first, second = (prediction_folder(curve_work, s, f"stock_{iterations}", None) for s in (r, r + 1))
            out = prediction_folder(curve_work, r, f"stock_seed_ensemble_{iterations}", None)
            _seed_ensemble(envs[r], first, second, out)
            rows += _curve_rows(out, test, [folders["stock", r], folders["stock", r + 1]], iterations=iterations,
                                method="stock_seed_ensemble", replicate=r)
        record_curve_models(spec, curve_work, iterations, folders)
    path = os.path.join(REPO, "docs", "results", f"evidence_{spec['key']}_budget_curve.csv")
    if rows:
        write_rows(_merged(path, rows, ("iterations", "method", "replicate")), path)
    return path


def record_curve_models(spec: dict, curve_work: str, iterations: int, folders: dict) -> str:
    """docs/results/evidence_<dataset>_budget_curve_models.json, ``<iterations>`` -> model -> replicate: the
    :func:`model_record` of each of ``folders`` ((model, replicate) -> model folder; recycling r with its stock r
    partner's ensemble choice) and the wall time of each of its test predictions (``finished.json``), merged into
    what earlier runs recorded."""
    path = os.path.join(REPO, "docs", "results", f"evidence_{spec['key']}_budget_curve_models.json")
    models = json.load(open(path)) if os.path.isfile(path) else {}
    for (model, r), folder in folders.items():
        record = model_record(folder, iterations, folders.get(("stock", r)) if model != "stock" else None)
        if record is None:
            continue
        methods = ("stock",) if model == "stock" else (model, f"ensemble_{model}")
        for method in methods:
            seconds = recorded_seconds(os.path.join(prediction_folder(curve_work, r, f"{method}_{iterations}", None),
                                                    "finished.json"))
            if seconds is not None:
                record.setdefault("prediction_seconds", {})[method] = seconds
        models.setdefault(str(iterations), {}).setdefault(model, {})[str(r)] = record
    with open(path, "w") as f:
        json.dump(models, f, indent=1, sort_keys=True)
    return path


def _curve_rows(folder: str, test: tuple, models: list[str], **fields) -> list[dict]:
    """The budget curve's rows of one prediction folder: ``fields``, the trainers of ``models`` (model folders) and
    the sum of their training wall times (empty when one is unknown)."""
    seconds = [training_seconds(os.path.join(m, "fold_0")) for m in models]
    trainers = "+".join(os.path.basename(m).split("__")[0] for m in models)
    total = "" if None in seconds else sum(seconds)
    return evaluate_prediction_folder(folder, *test, {**fields, "trainer": trainers, "training_seconds": total})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("hc18", "hippocampus"), default="hc18")
    parser.add_argument("--work", default=os.path.join(REPO, "benchmark_data", "evidence"),
                        help="nnU-Net folders and predictions (kept between runs)")
    parser.add_argument("--stage", choices=("all", "prepare", "train", "choose", "predict", "evaluate", "report",
                                            "budget_curve"), default="all")
    parser.add_argument("--replicates", type=int, default=None, help="default: 2 for hc18, 3 for hippocampus")
    parser.add_argument("--only_replicates", type=int, nargs="+", default=None,
                        help="train, choose, predict and evaluate these replicate numbers only (default: all)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 3000], choices=sorted(BUDGET_CURVE),
                        help="budget_curve stage: the iterations to train (default: 300 3000, the CPU study's)")
    parser.add_argument("--budget_replicates", type=int, nargs="+", default=[0],
                        help="budget_curve stage: the replicate numbers of stock, recycling and their ensemble "
                             "(default: 0)")
    parser.add_argument("--budget_stock_replicates", type=int, default=1, choices=(1, 2),
                        help="budget_curve stage: 2 trains stock replicate r + 1 beside each replicate r, for the "
                             "seed-ensemble control (default: 1)")
    parser.add_argument("--parallel_training", action="store_true",
                        help="budget_curve stage: train a budget's models at the same time (one GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help="comma-separated samplers the diffusion models predict with (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)} to train (default: all)")
    args = parser.parse_args()
    if args.budget_stock_replicates == 2 and set(args.budget_replicates) & {r + 1 for r in args.budget_replicates}:
        parser.error("--budget_stock_replicates 2 trains stock r + 1 as the partner of replicate r: "
                     "--budget_replicates must not hold two consecutive numbers")
    spec = {**DATASETS[args.dataset], "key": args.dataset}
    replicates = args.only_replicates or list(range(args.replicates or (2 if args.dataset == "hc18" else 3)))
    work = os.path.join(os.path.abspath(args.work), args.dataset)
    stages = (("prepare", "train", "choose", "predict", "evaluate", "report") if args.stage == "all"
              else (args.stage,))
    if "prepare" not in stages and stages != ("report",) and (problem := prepared_error(spec, work)):
        parser.error(problem)
    started = time.time()
    if "prepare" in stages:
        prepare(spec, work)
    if "train" in stages:
        train(spec, work, replicates, args.device, tuple(args.methods.split(",")))
    if "choose" in stages:
        choose_ensembles(spec, work, replicates)
    if "predict" in stages:
        predict(spec, work, replicates, args.device, tuple(args.samplers.split(",")))
    if "evaluate" in stages:
        evaluate(spec, work, replicates)
    if "report" in stages:
        from evidence_report import write_evidence
        write_evidence(spec)
    if "budget_curve" in stages:
        budget_curve(spec, work, args.device, args.budgets, args.budget_replicates, args.budget_stock_replicates,
                     args.parallel_training)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
