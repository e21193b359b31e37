"""xt-recycling (Fu et al. 2023, arXiv 2303.06040): the first pass sees the ground truth noised to t + 1, the
second the first prediction re-noised to t; the loss is against the ground truth."""

import pytest
import torch
from nnunet_fixtures import make_trainer, random_batch
from spies import SpyNetwork, spy_on_loss, spy_on_q_sample
from strategy_checks import check_xt_recycling

from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycleNext,
    nnUNetTrainerDiffSelfCond,
    nnUNetTrainerDiffSelfCondNext,
)

T = nnUNetTrainerDiffRecycleNext.num_diffusion_timesteps


def test_step_matches_its_definition():
    check_xt_recycling(make_trainer(nnUNetTrainerDiffRecycleNext), seed=5)


def test_first_pass_covers_timesteps_1_to_T_minus_1_and_second_pass_0_to_T_minus_2():
    trainer = make_trainer(nnUNetTrainerDiffRecycleNext)
    trainer.network = SpyNetwork(trainer.network)
    torch.manual_seed(0)
    for seed in range(10):
        batch = random_batch(trainer, batch_size=8, seed=seed)
        with torch.no_grad():
            trainer.diffusion_forward(batch["data"], batch["target"])
    first_t = torch.cat([c["tau"] for c in trainer.network.calls[0::2]]) * T - 1
    second_t = torch.cat([c["tau"] for c in trainer.network.calls[1::2]]) * T - 1
    assert torch.round(first_t).unique().tolist() == list(range(1, T))
    assert torch.round(second_t).unique().tolist() == list(range(T - 1))


def test_loss_is_against_the_ground_truth_on_the_second_pass():
    trainer = make_trainer(nnUNetTrainerDiffRecycleNext)
    trainer.network = SpyNetwork(trainer.network)
    spy_on_q_sample(trainer)
    loss_calls = spy_on_loss(trainer)
    batch = random_batch(trainer)
    trainer.train_step(batch)
    (loss_call,) = loss_calls
    assert all(torch.equal(a, b) for a, b in zip(loss_call["target"], batch["target"], strict=True))
    first, second = trainer.network.calls
    assert torch.equal(loss_call["output"], second["output"]) and second["output_requires_grad"]
    assert not torch.equal(loss_call["output"], first["output"])


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiff, nnUNetTrainerDiffSelfCond, nnUNetTrainerDiffSelfCondNext,
                                           nnUNetTrainerDiffRecycleNext, nnUNetTrainerDiffRecycle])
def test_every_strategy_updates_the_weights_with_a_finite_loss(trainer_class):
    trainer = make_trainer(trainer_class)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(random_batch(trainer))["loss"]
    assert torch.isfinite(torch.as_tensor(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))
