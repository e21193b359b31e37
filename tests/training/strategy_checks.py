"""One checker per training strategy: runs a recorded training step and asserts exactly what docs/design.md says that
strategy does. ``test_strategy_swaps.py`` proves each checker rejects every other strategy's step."""

import torch
from nnunet_fixtures import random_batch
from spies import SpyNetwork, spy_on_q_sample

from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0, network_mask_input, x0_from_logits
from nnunetv2_diffusion.networks.wrappers import highest_resolution

BATCH_SIZE = 8  # large enough that a self-conditioning batch mixes conditioned and dropped samples


def recorded_step(trainer, seed: int = 0, target=None) -> dict:
    """One ``train_step`` on a seeded batch (its target replaced by ``target`` if given), with every network call
    and every q_sample recorded. The step's own randomness is seeded too, so two calls differ only by the target."""
    batch = random_batch(trainer, batch_size=BATCH_SIZE, seed=seed)
    if target is not None:
        batch["target"] = target
    if not isinstance(trainer.network, SpyNetwork):
        trainer.network = SpyNetwork(trainer.network)
    trainer.network.calls.clear()
    q_calls = spy_on_q_sample(trainer)
    torch.manual_seed(1000 + seed)
    trainer.train_step(batch)
    del trainer.diffusion.q_sample  # back to the class's method
    labels = highest_resolution(batch["target"])
    return {"calls": list(trainer.network.calls), "q_calls": q_calls, "batch": batch,
            "x0_gt": labels_to_x0(labels, trainer.label_manager.num_segmentation_heads)}


def timesteps_of(call: dict, num_timesteps: int) -> torch.Tensor:
    """The integer timesteps t of a recorded call, from tau = (t + 1) / T."""
    return torch.round(call["tau"] * num_timesteps - 1).long()


def _other_target(trainer, seed: int):
    return random_batch(trainer, batch_size=BATCH_SIZE, seed=seed + 500)["target"]


def check_standard(trainer, seed: int = 0) -> None:
    """One pass, with gradient, on x_t = q_sample(x0_gt, t, eps), t in [0, T-1], no estimate channels."""
    num_timesteps = trainer.num_diffusion_timesteps
    step = recorded_step(trainer, seed)
    assert len(step["calls"]) == 1, "standard diffusion makes exactly one forward pass"
    (call,), (noising,) = step["calls"], step["q_calls"]
    assert call["grad_enabled"] and call["output_requires_grad"]
    assert call["x0_previous"] is None
    assert torch.equal(noising["x0"], step["x0_gt"])
    assert torch.equal(call["noisy_mask"], noising["x_t"])
    assert torch.equal(timesteps_of(call, num_timesteps), noising["t"])
    assert int(noising["t"].max()) <= num_timesteps - 1


def check_xT_recycling(trainer, seed: int = 0) -> None:
    """First pass without gradient at t = T-1 from pure noise (independent of the ground truth); second pass with
    gradient on q_sample(x0_hat(first), t, eps'), t in [0, T-2]."""
    num_timesteps = trainer.num_diffusion_timesteps
    step = recorded_step(trainer, seed)
    assert len(step["calls"]) == 2, "xT-recycling makes two forward passes"
    first, second = step["calls"]
    assert not first["grad_enabled"] and not first["output_requires_grad"]
    assert second["grad_enabled"] and second["output_requires_grad"]
    assert torch.all(timesteps_of(first, num_timesteps) == num_timesteps - 1)
    assert abs(first["noisy_mask"].std().item() - 1.0) < 0.1 and abs(first["noisy_mask"].mean().item()) < 0.1
    other = recorded_step(trainer, seed, target=_other_target(trainer, seed))
    assert torch.equal(other["calls"][0]["noisy_mask"], first["noisy_mask"]), "first input must not see the GT"
    assert len(step["q_calls"]) == 1
    (noising,) = step["q_calls"]
    assert torch.allclose(noising["x0"], x0_from_logits(first["output"]), atol=1e-6)
    assert torch.equal(second["noisy_mask"], noising["x_t"])
    assert torch.equal(timesteps_of(second, num_timesteps), noising["t"])
    assert int(noising["t"].max()) <= num_timesteps - 2


def check_xt_recycling(trainer, seed: int = 0) -> None:
    """First pass without gradient on x_{t+1} = q_sample(x0_gt, t + 1, eps) at t + 1; second pass with gradient on
    q_sample(x0_hat(first), t, eps'), t in [0, T-2]."""
    num_timesteps = trainer.num_diffusion_timesteps
    step = recorded_step(trainer, seed)
    assert len(step["calls"]) == 2, "xt-recycling makes two forward passes"
    first, second = step["calls"]
    assert not first["grad_enabled"] and not first["output_requires_grad"]
    assert second["grad_enabled"] and second["output_requires_grad"]
    assert len(step["q_calls"]) == 2
    from_truth, from_prediction = step["q_calls"]
    assert torch.equal(from_truth["x0"], step["x0_gt"])
    assert torch.equal(first["noisy_mask"], from_truth["x_t"])
    assert torch.equal(from_truth["t"], from_prediction["t"] + 1)
    assert torch.equal(timesteps_of(first, num_timesteps), from_truth["t"])
    assert torch.allclose(from_prediction["x0"], x0_from_logits(first["output"]), atol=1e-6)
    assert torch.equal(second["noisy_mask"], from_prediction["x_t"])
    assert torch.equal(timesteps_of(second, num_timesteps), from_prediction["t"])
    assert int(from_prediction["t"].max()) <= num_timesteps - 2
    other = recorded_step(trainer, seed, target=_other_target(trainer, seed))
    assert not torch.equal(other["calls"][0]["noisy_mask"], first["noisy_mask"]), "first input is built from the GT"


def _self_conditioning_common(trainer, step: dict) -> tuple[dict, dict, torch.Tensor, dict]:
    """Checks shared by both self-conditioning forms; returns (first call, second call, conditioned mask, x_t
    noising record)."""
    num_timesteps = trainer.num_diffusion_timesteps
    assert len(step["calls"]) == 2, "this batch has conditioned samples, so there must be a first pass"
    first, second = step["calls"]
    assert not first["grad_enabled"] and not first["output_requires_grad"]
    assert second["grad_enabled"] and second["output_requires_grad"]
    noising = step["q_calls"][0]
    assert torch.equal(noising["x0"], step["x0_gt"])
    assert torch.equal(second["noisy_mask"], noising["x_t"])
    assert torch.equal(timesteps_of(second, num_timesteps), noising["t"])
    assert first["x0_previous"] is None, "the first pass has zero estimate channels"
    assert second["x0_previous"] is not None, "the second pass gets the estimate channels"
    channels = network_mask_input(second["x0_previous"])
    conditioned = channels.flatten(1).abs().amax(1) > 0
    assert 0 < int(conditioned.sum()) < conditioned.numel(), "this seed mixes conditioned and dropped samples"
    assert first["image"].shape[0] == int(conditioned.sum())
    assert torch.equal(first["image"], step["batch"]["data"][conditioned])
    assert torch.all(channels[~conditioned] == 0)
    assert torch.allclose(channels[conditioned], network_mask_input(x0_from_logits(first["output"])), atol=1e-6)
    return first, second, conditioned, noising


def check_self_conditioning(trainer, seed: int = 0) -> None:
    """Chen et al. 2022: x_t = q_sample(x0_gt, t), t in [0, T-1]; for a random subset, a first pass without gradient
    on the same x_t and t with zero estimate channels; second pass with gradient, estimate channels m(x0_hat(first))
    for that subset and zero for the rest."""
    step = recorded_step(trainer, seed)
    first, _, conditioned, noising = _self_conditioning_common(trainer, step)
    assert len(step["q_calls"]) == 1
    assert torch.equal(first["noisy_mask"], noising["x_t"][conditioned])
    assert torch.equal(first["tau"], step["calls"][1]["tau"][conditioned])


def check_self_conditioning_next(trainer, seed: int = 0) -> None:
    """Watson et al. 2023: as Chen et al., but the first pass sees x_{t+1} = q_sample(x0_gt, t + 1) at t + 1, with
    t in [0, T-2]."""
    num_timesteps = trainer.num_diffusion_timesteps
    step = recorded_step(trainer, seed)
    first, _, conditioned, noising = _self_conditioning_common(trainer, step)
    assert len(step["q_calls"]) == 2
    next_noising = step["q_calls"][1]
    assert torch.equal(next_noising["x0"], step["x0_gt"][conditioned])
    assert torch.equal(next_noising["t"], noising["t"][conditioned] + 1)
    assert torch.equal(first["noisy_mask"], next_noising["x_t"])
    assert torch.equal(timesteps_of(first, num_timesteps), next_noising["t"])
    assert int(noising["t"].max()) <= num_timesteps - 2
