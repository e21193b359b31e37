"""Does a trained diffusion model use its diffusion inputs? One denoising step over whole validation cases, with the
mask input and the timestep set by hand, everything else fixed.

    .venv/bin/python benchmarks/conditioning_probe.py -m $nnUNet_results/Dataset520_HC18/<trainer>__nnUNetPlans__2d

For every training timestep t the model is fed x_t = q_sample(x0, t, eps) with x0 the ground truth ("truth"), all
background ("background") or, instead, pure noise eps ("noise"), at tau(t), and the Dice of its x0 estimate (argmax,
mean over foreground labels and cases, in preprocessed space) is reported. A model that reads its mask input scores
higher from the truth than from background at small t; one that ignores it scores the same. Then, with the noise
input fixed, the mean absolute change of the probabilities when only tau changes (each tau against tau(T-1)) says how
much the timestep moves the output. Same eps for every input and timestep of a case; no mirroring.
Writes docs/results/conditioning_<model folder name>.json and prints a Markdown table.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import REPO  # noqa: E402

from nnunetv2_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0  # noqa: E402
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor  # noqa: E402

INPUTS = ("truth", "background", "noise")


def validation_cases(predictor: nnUNetDiffusionPredictor, fold: int, limit: int | None):
    """(key, data (c, *spatial) float32, labels (1, *spatial) long, background for negative ids) of the fold's
    validation split, from nnU-Net's preprocessed folder."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    base = join(os.environ["nnUNet_preprocessed"], predictor.plans_manager.dataset_name)
    keys = sorted(load_json(join(base, "splits_final.json"))[fold]["val"])[:limit]
    folder = join(base, predictor.configuration_manager.data_identifier)
    dataset = infer_dataset_class(folder)(folder, keys)
    for key in keys:
        data, seg, _, _ = dataset.load_case(key)
        yield key, torch.from_numpy(np.asarray(data)).float(), torch.from_numpy(np.asarray(seg)).long().clamp_min(0)


def mean_foreground_dice(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    prediction = probabilities.argmax(0)
    scores = []
    for k in range(1, probabilities.shape[0]):
        predicted, true = prediction == k, labels[0] == k
        total = (predicted.sum() + true.sum()).item()
        if total:
            scores.append(2 * (predicted & true).sum().item() / total)
    return float(np.mean(scores)) if scores else float("nan")


def probe(model_folder: str, fold: int, limit: int | None, checkpoint: str, device: str) -> dict:
    predictor = nnUNetDiffusionPredictor(use_mirroring=False, device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint)
    config = predictor.diffusion_network.config
    diffusion = GaussianDiffusion.from_schedule(config.schedule, config.num_timesteps)
    num_classes = predictor.diffusion_network.num_classes
    timesteps = list(range(config.num_timesteps))
    dice = {name: {t: [] for t in timesteps} for name in INPUTS}
    tau_change = {t: [] for t in timesteps}
    mask_change = {t: [] for t in timesteps}
    for index, (_, data, labels) in enumerate(validation_cases(predictor, fold, limit)):
        generator = torch.Generator().manual_seed(index)
        eps = torch.randn((1, num_classes, *labels.shape[1:]), generator=generator)
        x0 = {"truth": labels_to_x0(labels[None], num_classes), "background": labels_to_x0(
            torch.zeros_like(labels)[None], num_classes)}
        reference_noise = predictor.denoise_case(data, eps[0], timesteps[-1])
        for t in timesteps:
            step = torch.full((1,), t)
            outputs = {name: predictor.denoise_case(data, diffusion.q_sample(x0[name], step, eps)[0], t)
                       for name in x0}
            outputs["noise"] = reference_noise if t == timesteps[-1] else predictor.denoise_case(data, eps[0], t)
            for name in INPUTS:
                dice[name][t].append(mean_foreground_dice(outputs[name], labels))
            tau_change[t].append((outputs["noise"] - reference_noise).abs().mean().item())
            mask_change[t].append((outputs["truth"] - outputs["background"]).abs().mean().item())
    return {"model": os.path.basename(os.path.normpath(model_folder)), "fold": fold, "checkpoint": checkpoint,
            "cases": len(tau_change[0]), "conditioning": config.conditioning, "strategy": config.strategy,
            "timesteps": {str(t): {"tau": (t + 1) / config.num_timesteps,
                                   **{f"dice_{name}": float(np.nanmean(dice[name][t])) for name in INPUTS},
                                   "probability_change_truth_vs_background": float(np.mean(mask_change[t])),
                                   "probability_change_vs_last_tau": float(np.mean(tau_change[t]))}
                          for t in timesteps}}


def markdown(result: dict) -> str:
    lines = [f"`{result['model']}` (conditioning '{result['conditioning']}', {result['cases']} validation cases)", "",
             "| t | tau | Dice from truth | from background | from noise | mean abs change truth vs background |"
             " mean abs change vs tau(T-1) |", "|---|---|---|---|---|---|---|"]
    for t, row in result["timesteps"].items():
        lines.append(f"| {t} | {row['tau']:.1f} | {row['dice_truth']:.3f} | {row['dice_background']:.3f} | "
                     f"{row['dice_noise']:.3f} | {row['probability_change_truth_vs_background']:.4f} | "
                     f"{row['probability_change_vs_last_tau']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", required=True, help="trained diffusion model folder")
    parser.add_argument("-f", type=int, default=0, help="fold (its validation cases are probed)")
    parser.add_argument("--cases", type=int, default=None, help="at most this many validation cases")
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("-o", default=None, help="output JSON (default: docs/results/conditioning_<model>.json)")
    args = parser.parse_args()
    result = probe(args.m, args.f, args.cases, args.chk, args.device)
    path = args.o or os.path.join(REPO, "docs", "results", f"conditioning_{result['model']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(markdown(result))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
