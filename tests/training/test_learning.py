"""The recycling trainer learns: after a short CPU run on synthetic 2D data, sampled masks beat trivial baselines."""

import numpy as np
import torch
from nnunet_fixtures import make_trainer
from synthetic_data import make_case

from nnunetv2_diffusion.training import nnUNetTrainerDiff, nnUNetTrainerDiffRecycle


def _synthetic_batch(rng, batch_size=4, shape=(32, 32)):
    cases = [make_case(rng, shape, 2) for _ in range(batch_size)]
    image = torch.from_numpy(np.stack([c[0] for c in cases])[:, None])
    labels = torch.from_numpy(np.stack([c[1] for c in cases])[:, None]).float()
    return image, labels


def _dice(prediction: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    p, g = prediction == k, labels == k
    return (2 * (p & g).sum() / (p.sum() + g.sum()).clamp_min(1)).item()


def _train_and_score(trainer_class, iterations: int) -> tuple[float, float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trainer = make_trainer(trainer_class, deep_supervision=False)
    trainer.network.train()
    losses = []
    for _ in range(iterations):
        image, labels = _synthetic_batch(rng)
        losses.append(float(trainer.train_step({"data": image, "target": labels})["loss"]))
    image, labels = _synthetic_batch(np.random.default_rng(99), batch_size=8)
    trainer.network.eval()
    prediction = trainer.network.sample(image, generator=torch.Generator().manual_seed(0)).argmax(1, keepdim=True)
    dice = float(np.mean([_dice(prediction, labels, k) for k in (1, 2)]))
    all_foreground = float(np.mean([_dice(torch.full_like(labels, k), labels, k) for k in (1, 2)]))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    return dice, all_foreground


def test_recycling_learns_synthetic_shapes_well_above_trivial_baselines():
    # measured here: mean foreground Dice 0.78 after 60 iterations (both strategies); predicting a class everywhere
    # gives 0.15, background only 0
    dice, all_foreground = _train_and_score(nnUNetTrainerDiffRecycle, iterations=60)
    assert all_foreground < 0.3
    assert dice > 0.6


def test_standard_diffusion_learns_too():
    dice, _ = _train_and_score(nnUNetTrainerDiff, iterations=60)
    assert dice > 0.6
