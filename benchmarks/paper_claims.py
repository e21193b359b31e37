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
import csv
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from segmentation_metrics import evaluate_case  # noqa: E402

BIN = os.path.dirname(sys.executable)
DATASETS = {
    "hc18": {"id": 520, "name": "Dataset520_HC18", "configuration": "2d",
             "converter": "nnunetv2_diffusion.dataset_conversion.Dataset520_HC18",
             "source": os.path.join(REPO, "data", "hc18_fetal_head_us")},
    # CPU protocol: nnU-Net's 2d plan of the 3D volumes (slice-wise model, evaluated on whole volumes) with 32 slices
    # a batch instead of the planned ~366, so 300 iterations take minutes; 3d_fullres needs hours per model here
    "hippocampus": {"id": 527, "name": "Dataset527_Hippocampus", "configuration": "2d_bs32", "planned": "2d",
                    "derived": {"batch_size": 32},
                    "converter": "nnunetv2_diffusion.dataset_conversion.Dataset527_Hippocampus",
                    "source": os.path.join(REPO, "..", "shared", "data", "msd_hippocampus")},
    # the full 3D protocol, for a GPU
    "hippocampus3d": {"id": 527, "name": "Dataset527_Hippocampus", "configuration": "3d_fullres",
                      "converter": "nnunetv2_diffusion.dataset_conversion.Dataset527_Hippocampus",
                      "source": os.path.join(REPO, "..", "shared", "data", "msd_hippocampus")},
}
STOCK = "nnUNetTrainer"
DIFFUSION = ["nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond", "nnUNetTrainerDiffRecycleNext",
             "nnUNetTrainerDiffRecycle"]
LABELS = {"nnUNetTrainer": "stock nnU-Net", "nnUNetTrainerDiff": "standard diffusion",
          "nnUNetTrainerDiffSelfCond": "self-conditioning", "nnUNetTrainerDiffRecycleNext": "xt-recycling",
          "nnUNetTrainerDiffRecycle": "xT-recycling (ours)", "ensemble": "stock + xT-recycling"}
SAMPLERS = ("ddpm", "ddim")
STEPS = 5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: list[str], env: dict) -> None:
    log(" ".join(args))
    subprocess.run([os.path.join(BIN, args[0]), *args[1:]], env=env, check=True)


def nnunet_env(work: str, replicate: int) -> dict:
    env = dict(os.environ)
    env.update({"nnUNet_raw": f"{work}/nnUNet_raw", "nnUNet_preprocessed": f"{work}/nnUNet_preprocessed",
                "nnUNet_results": f"{work}/nnUNet_results/replicate_{replicate}", "nnUNet_compile": "f",
                "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "2")})
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    return env


def prepare(spec: dict, work: str) -> None:
    # nnU-Net 2.8.1's planning crashes with nnUNet_n_proc_DA=0, which training and prediction use here
    env = {**nnunet_env(work, 0), "nnUNet_n_proc_DA": "2"}
    if not os.path.isfile(os.path.join(env["nnUNet_raw"], spec["name"], "dataset.json")):
        run(["python", "-m", spec["converter"], "-i", spec["source"], "-d", str(spec["id"])], env)
    configuration = spec.get("planned", spec["configuration"])
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], spec["name"], f"nnUNetPlans_{configuration}")):
        run(["nnUNetv2_plan_and_preprocess", "-d", str(spec["id"]), "-c", configuration, "-np", "2",
             "--verify_dataset_integrity"], env)
    if "derived" in spec:  # a configuration that reuses the planned one's preprocessed data (nnU-Net's inherits_from)
        plans_file = os.path.join(env["nnUNet_preprocessed"], spec["name"], "nnUNetPlans.json")
        plans = json.load(open(plans_file))
        wanted = {"inherits_from": configuration, **spec["derived"]}
        if plans["configurations"].get(spec["configuration"]) != wanted:
            plans["configurations"][spec["configuration"]] = wanted
            json.dump(plans, open(plans_file, "w"), indent=4)
            log(f"added configuration {spec['configuration']} = {wanted} to {plans_file}")


def model_folder(env: dict, spec: dict, trainer: str, budget: str) -> str:
    return os.path.join(env["nnUNet_results"], spec["name"], f"{trainer}{budget}__nnUNetPlans__{spec['configuration']}")


def train(spec: dict, work: str, replicate: int, budget: str, device: str) -> None:
    env = {**nnunet_env(work, replicate), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
    # the paper's method and its two anchors first, so a run cut short still answers claims (c) and (d)
    for trainer in ["nnUNetTrainerDiffRecycle", STOCK, "nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond",
                    "nnUNetTrainerDiffRecycleNext"]:
        if not os.path.isfile(os.path.join(model_folder(env, spec, trainer, budget), "fold_0", "checkpoint_final.pth")):
            run(["nnUNetv2_train", str(spec["id"]), spec["configuration"], "0", "-tr", trainer + budget,
                 "-device", device], env)


def prediction_folder(work: str, replicate: int, method: str, sampler: str | None) -> str:
    return os.path.join(work, "predictions", f"replicate_{replicate}", method if sampler is None else
                        f"{method}_{sampler}")


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
        missing = [t for t in needed if not os.path.isfile(
            os.path.join(model_folder(env, spec, t, budget), "fold_0", "checkpoint_final.pth"))]
        if os.path.isfile(done) or missing:
            if missing:
                log(f"skipping {os.path.basename(out)}: {', '.join(missing)} not trained yet")
            continue
        start = time.time()
        run([*command, *common, "-o", out], env)
        json.dump({"seconds": time.time() - start}, open(done, "w"))


def evaluate(spec: dict, work: str, replicates: int) -> str:
    """One CSV row per replicate, method, sampler, step, case and label; cached per prediction folder."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    raw = os.path.join(work, "nnUNet_raw", spec["name"])
    dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
    ending = dataset_json["file_ending"]
    reader = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(raw, "imagesTr", os.listdir(
        os.path.join(raw, "imagesTr"))[0]))()
    labels = sorted(v for k, v in dataset_json["labels"].items() if k != "background")
    rows = []
    for replicate in range(replicates):
        for folder in sorted(glob.glob(os.path.join(work, "predictions", f"replicate_{replicate}", "*"))):
            cache = os.path.join(folder, "metrics.json")
            if not os.path.isfile(cache):
                method, _, sampler = os.path.basename(folder).partition("_")
                folder_rows = []
                for reference in sorted(glob.glob(os.path.join(raw, "labelsTs", f"*{ending}"))):
                    case = os.path.basename(reference)[: -len(ending)]
                    steps = {STEPS: os.path.join(folder, case + ending)}
                    steps.update({k: os.path.join(folder, "steps", f"{case}_step{k}{ending}")
                                  for k in range(1, STEPS) if os.path.isfile(os.path.join(folder, "steps",
                                                                                          f"{case}_step{k}{ending}"))})
                    for step, prediction in sorted(steps.items()):
                        for label, metrics in evaluate_case(reference, prediction, reader, labels).items():
                            folder_rows.append({"replicate": replicate, "method": method, "sampler": sampler or "-",
                                                "step": step, "case": case, "label": label, **metrics})
                json.dump(folder_rows, open(cache, "w"))
            rows += json.load(open(cache))
    path = os.path.join(REPO, "docs", "results", f"{spec['key']}_cases.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {len(rows)} rows to {path}")
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
        from claims_report import write_report
        write_report(spec, work, args.replicates, args.budget)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
