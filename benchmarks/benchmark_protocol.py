"""What every accuracy benchmark shares: the datasets and their plans, the nnU-Net folders, running the stock command
lines, and the layout of models and predictions under the work folder (``<work>/<dataset>/...``).

Every dataset is read from this repository's ``data/`` folder, so each benchmark runs from a fresh clone.
"""

import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
                    "source": os.path.join(REPO, "data", "msd_hippocampus")},
    # the full 3D protocol, for a GPU
    "hippocampus3d": {"id": 527, "name": "Dataset527_Hippocampus", "configuration": "3d_fullres",
                      "converter": "nnunetv2_diffusion.dataset_conversion.Dataset527_Hippocampus",
                      "source": os.path.join(REPO, "data", "msd_hippocampus")},
}
STOCK = "nnUNetTrainer"
SAMPLERS = ("ddpm", "ddim")
STEPS = 5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: list[str], env: dict) -> None:
    """Runs one of the virtual environment's console scripts (or its python) and fails on a non-zero exit."""
    log(" ".join(args))
    subprocess.run([os.path.join(BIN, args[0]), *args[1:]], env=env, check=True)


def prepared_error(spec: dict, work: str) -> str | None:
    """Why ``work`` (``<--work>/<dataset>``) cannot be used by a stage that needs the prepared dataset, or None.
    Without the check, a --work one level too deep fails deep inside (a dangling symlink, a missing split file)."""
    for source in ("nnUNet_preprocessed", "nnUNet_raw"):  # the test cases and their labels are read from raw
        prepared = os.path.join(work, source, spec["name"])
        if not os.path.isdir(prepared):
            return (f"{prepared} does not exist: prepare the dataset first (--stage prepare of evidence_study.py or "
                    f"paper_claims.py), or give --work the folder that holds {spec['key']}/")
    return None


def nnunet_env(work: str, replicate: int) -> dict:
    """The environment of nnU-Net's commands: shared raw and preprocessed folders, one results folder a replicate."""
    env = dict(os.environ)
    env.update({"nnUNet_raw": f"{work}/nnUNet_raw", "nnUNet_preprocessed": f"{work}/nnUNet_preprocessed",
                "nnUNet_results": f"{work}/nnUNet_results/replicate_{replicate}",
                # compiling costs more than it saves in CPU runs this short; the GPU script turns it on
                "nnUNet_compile": env.get("nnUNet_compile", "f"),
                "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "2")})
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    return env


def prepare(spec: dict, work: str) -> None:
    """Converts, plans and preprocesses the dataset once; adds a derived configuration if the spec has one."""
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


def model_folder(env: dict, spec: dict, trainer: str, budget: str = "") -> str:
    return os.path.join(env["nnUNet_results"], spec["name"], f"{trainer}{budget}__nnUNetPlans__{spec['configuration']}")


def is_trained(env: dict, spec: dict, trainer: str, budget: str = "") -> bool:
    return os.path.isfile(os.path.join(model_folder(env, spec, trainer, budget), "fold_0", "checkpoint_final.pth"))


def prediction_folder(work: str, replicate: int, method: str, sampler: str | None) -> str:
    return os.path.join(work, "predictions", f"replicate_{replicate}", method if sampler is None else
                        f"{method}_{sampler}")


def test_cases(spec: dict, work: str) -> tuple[list[str], str, object, list[int]]:
    """(reference label files of the test split, file ending, nnU-Net reader instance, foreground label ids)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    raw = os.path.join(work, "nnUNet_raw", spec["name"])
    dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
    ending = dataset_json["file_ending"]
    reader = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(raw, "imagesTr", os.listdir(
        os.path.join(raw, "imagesTr"))[0]))()
    labels = sorted(v for k, v in dataset_json["labels"].items() if k != "background")
    return sorted(glob.glob(os.path.join(raw, "labelsTs", f"*{ending}"))), ending, reader, labels


def evaluate_prediction_folder(folder: str, references: list[str], ending: str, reader, labels: list[int],
                               fields: dict) -> list[dict]:
    """Rows of one prediction folder: per test case, sampling step (the final segmentation is step ``STEPS``, the
    ``steps/`` folder holds the others when saved) and label, ``fields`` + case, step, label, Dice and HD95. The
    metrics are cached in ``<folder>/metrics.json``; ``fields`` are applied on every call, so that they can change."""
    from segmentation_metrics import evaluate_case

    cache = os.path.join(folder, "metrics.json")
    if not os.path.isfile(cache):
        rows = []
        for reference in references:
            case = os.path.basename(reference)[: -len(ending)]
            steps = {STEPS: os.path.join(folder, case + ending)}
            steps.update({k: os.path.join(folder, "steps", f"{case}_step{k}{ending}") for k in range(1, STEPS)
                          if os.path.isfile(os.path.join(folder, "steps", f"{case}_step{k}{ending}"))})
            for step, prediction in sorted(steps.items()):
                for label, metrics in evaluate_case(reference, prediction, reader, labels).items():
                    rows.append({"step": step, "case": case, "label": label, **metrics})
        json.dump(rows, open(cache, "w"))
    # fields first in column order; their values replace any a cache of an earlier version holds
    return [{**fields, **row, **fields} for row in json.load(open(cache))]


def write_rows(rows: list[dict], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {len(rows)} rows to {path}")
