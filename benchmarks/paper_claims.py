"""Reproduces the paper's four claims on real data with the stock nnU-Net command lines. Resumable: every finished
training, prediction and evaluation is kept under --work and skipped when run again, so it can run in stages.

    .venv/bin/python benchmarks/paper_claims.py --dataset hc18            # everything, ~1 h on 2 CPU cores
    .venv/bin/python benchmarks/paper_claims.py --dataset hc18 --stage train
    .venv/bin/python benchmarks/paper_claims.py --dataset hippocampus      # 2d plan, 32 slices a batch (CPU)
    .venv/bin/python benchmarks/paper_claims.py --dataset hippocampus3d --device cuda    # 3d_fullres (GPU)

Protocol (same for every method): the dataset's nnU-Net plans, its fixed split (train / held-out test, fold 0 for
validation), the planned network topology, the same number of training iterations (the trainers' ``_300iters``
variants: 6 epochs x 50 iterations, poly learning rate), nnU-Net's augmentation and Dice+CE loss. Diffusion models are
sampled with DDPM and DDIM (eta 0), 5 steps, and every step's segmentation is evaluated; the ensemble averages the
recycling model's DDPM probabilities with the stock model's softmax (weight 0.5). Test-time mirroring is off for all
methods to fit the CPU budget. Replicates (``--replicates``) retrain every model in its own results folder; nnU-Net does
not seed training, so replicates differ in initialisation and data order.

Outputs (<dataset>: the --dataset key): docs/results/<dataset>_cases.csv (one row per replicate, method, sampler,
step, case, label), docs/results/<dataset>_summary.json and docs/<dataset>_*.png, used by docs/benchmarks.md.
"""

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import (  # noqa: E402
    DATASETS,
    REPO,
    SAMPLERS,
    STEPS,
    STOCK,
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
from claims_report import DIFFUSION, write_report  # noqa: E402


def train(spec: dict, work: str, replicate: int, budget: str, device: str) -> None:
    env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
    # the paper's method and its two anchors first, so a run cut short still answers claims (c) and (d)
    for trainer in ["nnUNetTrainerDiffRecycle", STOCK, "nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond",
                    "nnUNetTrainerDiffRecycleNext"]:
        if not is_trained(env, spec, trainer, budget):
            run(["nnUNetv2_train", str(spec["id"]), spec["configuration"], "0", "-tr", trainer + budget,
                 "-device", device], env)


def predict(spec: dict, work: str, replicate: int, budget: str, device: str) -> None:
    env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": "0"}
    images = os.path.join(env["nnUNet_raw"], spec["name"], "imagesTs")
    common = ["-i", images, "-d", str(spec["id"]), "-c", spec["configuration"], "-f", "0", "-device", device,
              "--disable_tta", "-npp", "1", "-nps", "1"]
    jobs = [(STOCK, None, ["nnUNetv2_predict", "-tr", STOCK + budget])]
    for trainer in DIFFUSION:
        for sampler in SAMPLERS:
            jobs.append((trainer, sampler, ["nnUNetv2_predict_diffusion", "-tr", trainer + budget, "--sampler",
                                            sampler, "--steps", str(STEPS), "--save_steps", "--seed", "0"]))
    jobs.append(("ensemble", "ddpm", ["nnUNetv2_predict_diffusion", "-tr", "nnUNetTrainerDiffRecycle" + budget,
                                      "--sampler", "ddpm", "--steps", str(STEPS), "--seed", "0", "--ensemble_with",
                                      model_folder(env, spec, STOCK, budget), "--ensemble_weight", "0.5"]))
    for method, sampler, command in jobs:
        out = prediction_folder(work, replicate, method, sampler)
        done = os.path.join(out, "finished.json")
        needed = [STOCK, "nnUNetTrainerDiffRecycle"] if method == "ensemble" else [method]
        missing = [t for t in needed if not is_trained(env, spec, t, budget)]
        if os.path.isfile(done) or missing:
            if missing:
                log(f"skipping {os.path.basename(out)}: {', '.join(missing)} not trained yet")
            continue
        start = time.time()
        run([*command, *common, "-o", out], env)
        json.dump({"seconds": time.time() - start}, open(done, "w"))


def evaluate(spec: dict, work: str, replicates: int) -> str:
    """One CSV row per replicate, method, sampler, step, case and label; cached per prediction folder."""
    references, ending, reader, labels = test_cases(spec, work)
    rows = []
    for replicate in range(replicates):
        for folder in sorted(glob.glob(os.path.join(work, "predictions", f"replicate_{replicate}", "*"))):
            method, _, sampler = os.path.basename(folder).partition("_")
            rows += evaluate_prediction_folder(folder, references, ending, reader, labels,
                                               {"replicate": replicate, "method": method, "sampler": sampler or "-"})
    path = os.path.join(REPO, "docs", "results", f"{spec['key']}_cases.csv")
    write_rows(rows, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hc18")
    parser.add_argument("--work", default=os.path.join(REPO, "benchmark_data"),
                        help="nnU-Net folders and predictions (kept between runs)")
    parser.add_argument("--stage", choices=("all", "prepare", "train", "predict", "evaluate", "report"), default="all")
    parser.add_argument("--replicates", type=int, default=1)
    parser.add_argument("--budget", default="_300iters", help="trainer-name suffix that sets the iteration budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hippocampus_source", default=None)
    args = parser.parse_args()
    spec = {**DATASETS[args.dataset], "key": args.dataset}
    if args.dataset.startswith("hippocampus") and args.hippocampus_source:
        spec["source"] = args.hippocampus_source
    work = os.path.join(os.path.abspath(args.work), args.dataset)
    stages = ("prepare", "train", "predict", "evaluate", "report") if args.stage == "all" else (args.stage,)
    if "prepare" not in stages and (problem := prepared_error(spec, work)):
        parser.error(problem)
    started = time.time()
    if "prepare" in stages:
        prepare(spec, work)
    for replicate in range(args.replicates):
        if "train" in stages:
            train(spec, work, replicate, args.budget, args.device)
        if "predict" in stages:
            predict(spec, work, replicate, args.budget, args.device)
    if "evaluate" in stages:
        evaluate(spec, work, args.replicates)
    if "report" in stages:
        write_report(spec, work, args.replicates, args.budget)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
