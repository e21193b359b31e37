"""Pins the semantics of each training strategy: every test fails if the step were replaced by another strategy."""

import numpy as np
import pytest
import torch
from nnunet_fixtures import make_trainer, random_batch
from spies import SpyNetwork, spy_on_loss, spy_on_q_sample

from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0, x0_from_logits
from nnunetv2_diffusion.training import nnUNetTrainerDiff, nnUNetTrainerDiffRecycle, nnUNetTrainerDiffSelfCond

T = nnUNetTrainerDiff.num_diffusion_timesteps


def _spied(trainer_class):
    trainer = make_trainer(trainer_class)
    trainer.network = SpyNetwork(trainer.network)
    return trainer, spy_on_q_sample(trainer), spy_on_loss(trainer)


def test_recycling_first_pass_is_from_pure_noise_at_the_last_timestep_without_gradient():
    trainer, _, _ = _spied(nnUNetTrainerDiffRecycle)
    trainer.train_step(random_batch(trainer))
    first, second = trainer.network.calls
    assert not first["grad_enabled"] and not first["output_requires_grad"]
    assert torch.all(first["tau"] == 1.0)  # t = T-1
    assert second["grad_enabled"] and second["output_requires_grad"]
    assert torch.all(second["tau"] <= (T - 1) / T)  # t in [0, T-2]


def test_recycling_first_input_does_not_depend_on_the_ground_truth():
    trainer, _, _ = _spied(nnUNetTrainerDiffRecycle)
    batch = random_batch(trainer, seed=1)
    other_truth = random_batch(trainer, seed=2)["target"]
    for target in (batch["target"], other_truth):
        torch.manual_seed(123)
        with torch.no_grad():
            trainer.diffusion_forward(batch["data"], target)
    first_with_truth, first_with_other_truth = trainer.network.calls[0], trainer.network.calls[2]
    assert torch.equal(first_with_truth["noisy_mask"], first_with_other_truth["noisy_mask"])
    assert abs(first_with_truth["noisy_mask"].std().item() - 1.0) < 0.1  # standard normal, not a mask


def test_recycling_second_input_is_built_from_the_first_prediction():
    trainer, q_calls, _ = _spied(nnUNetTrainerDiffRecycle)
    batch = random_batch(trainer)
    trainer.train_step(batch)
    first, second = trainer.network.calls
    (noising,) = q_calls
    assert torch.allclose(noising["x0"], x0_from_logits(first["output"]), atol=1e-6)
    assert not torch.allclose(noising["x0"], labels_to_x0(batch["target"][0], 3))
    assert torch.equal(second["noisy_mask"], noising["x_t"])
    assert torch.allclose(second["tau"], (noising["t"].float() + 1) / T)


def test_recycling_loss_is_the_second_pass_against_the_ground_truth():
    trainer, _, loss_calls = _spied(nnUNetTrainerDiffRecycle)
    batch = random_batch(trainer)
    trainer.train_step(batch)
    (loss_call,) = loss_calls
    assert all(torch.equal(a, b) for a, b in zip(loss_call["target"], batch["target"], strict=True))
    first, second = trainer.network.calls
    assert torch.equal(loss_call["output"], second["output"]) and second["output_requires_grad"]
    assert not torch.equal(loss_call["output"], first["output"])


@pytest.mark.parametrize("trainer_class, timesteps", [(nnUNetTrainerDiff, T), (nnUNetTrainerDiffSelfCond, T),
                                                     (nnUNetTrainerDiffRecycle, T - 1)])
def test_the_trained_pass_sees_every_timestep_of_its_strategy(trainer_class, timesteps):
    # standard diffusion and self-conditioning train t in [0, T-1] (sampling starts at T-1); recycling t in [0, T-2]
    # (T-1 is its first pass's, from pure noise)
    trainer, q_calls, _ = _spied(trainer_class)
    torch.manual_seed(0)
    for _ in range(40):
        batch = random_batch(trainer)
        with torch.no_grad():
            trainer.diffusion_forward(batch["data"], batch["target"])
    seen = torch.cat([c["t"] for c in q_calls]).unique().tolist()
    assert seen == list(range(timesteps))


def test_standard_step_noises_the_ground_truth_with_one_forward():
    trainer, q_calls, loss_calls = _spied(nnUNetTrainerDiff)
    batch = random_batch(trainer)
    trainer.train_step(batch)
    (call,) = trainer.network.calls
    (noising,) = q_calls
    assert call["grad_enabled"]
    assert torch.equal(noising["x0"], labels_to_x0(batch["target"][0], 3))
    assert torch.equal(call["noisy_mask"], noising["x_t"])
    assert loss_calls[0]["target"] is batch["target"] or torch.equal(loss_calls[0]["target"][0], batch["target"][0])


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiff, nnUNetTrainerDiffRecycle])
def test_train_step_updates_the_weights_and_returns_a_finite_loss(trainer_class):
    trainer = make_trainer(trainer_class)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(random_batch(trainer))["loss"]
    assert torch.isfinite(torch.as_tensor(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))


def test_validation_step_reports_foreground_counts_from_a_one_step_prediction():
    trainer = make_trainer(nnUNetTrainerDiffRecycle)
    trainer.network = SpyNetwork(trainer.network)
    batch = random_batch(trainer)
    with torch.no_grad():
        result = trainer.validation_step(batch)
    (call,) = trainer.network.calls
    assert torch.all(call["tau"] == 1.0)
    assert result["tp_hard"].shape == (2,)  # foreground classes only
    labels = batch["target"][0]
    # tp + fn of a class is its reference voxel count, whatever was predicted; tp + fp the predicted count
    np.testing.assert_array_equal(result["tp_hard"] + result["fn_hard"], [(labels == k).sum().item() for k in (1, 2)])
    predicted = call["output"].argmax(1)
    np.testing.assert_array_equal(result["tp_hard"] + result["fp_hard"],
                                  [(predicted == k).sum().item() for k in (1, 2)])
