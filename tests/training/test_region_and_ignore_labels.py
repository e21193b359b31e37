"""Region-based labels and the ignore label in training (docs/design.md, "Region labels and the ignore label").

Regions: x0 = 2 r - 1 per region channel, the first pass of the two-pass strategies through a sigmoid, nnU-Net's region
loss and pseudo-Dice. Ignore label: x0 = 0 at ignored voxels, and those voxels never reach the loss or the
pseudo-Dice.
"""

import pytest
import torch
from nnunet_fixtures import ignore_dataset_json, make_trainer, random_batch, region_dataset_json
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from spies import SpyNetwork, spy_on_q_sample

from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0
from nnunetv2_diffusion.networks.wrappers import highest_resolution, unwrap_network
from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_focalDice,
    nnUNetTrainerDiffSelfCond,
)


def _recorded_step(trainer, seed: int = 0):
    batch = random_batch(trainer, batch_size=4, seed=seed)
    trainer.network = SpyNetwork(trainer.network)
    q_calls = spy_on_q_sample(trainer)
    torch.manual_seed(seed)
    loss = trainer.train_step(batch)["loss"]
    del trainer.diffusion.q_sample
    return batch, list(trainer.network.calls), q_calls, loss


def test_region_x0_is_the_region_target_in_diffusion_space(nnunet_env):
    trainer = make_trainer(nnUNetTrainerDiff, labels_json=region_dataset_json())
    assert trainer.label_manager.num_segmentation_heads == 2
    assert isinstance(trainer.loss.loss, DC_and_BCE_loss)  # nnU-Net's region loss, under deep supervision
    batch, calls, (noising,), loss = _recorded_step(trainer)
    regions = highest_resolution(batch["target"])
    assert torch.equal(noising["x0"], 2 * regions - 1)
    assert torch.isfinite(torch.as_tensor(loss))
    assert calls[0]["noisy_mask"].shape[1] == 2


def test_recycling_on_regions_noises_a_sigmoid_prediction(nnunet_env):
    trainer = make_trainer(nnUNetTrainerDiffRecycle, labels_json=region_dataset_json())
    _, calls, (noising,), _ = _recorded_step(trainer)
    first = calls[0]["output"]
    assert torch.allclose(noising["x0"], 2 * torch.sigmoid(first) - 1, atol=1e-6)
    # regions overlap: the channels do not sum to 2 - C as a softmax's would
    assert not torch.allclose(noising["x0"].sum(1), torch.zeros_like(noising["x0"][:, 0]), atol=1e-3)


def test_the_region_flag_travels_in_the_network_settings(nnunet_env):
    regions = make_trainer(nnUNetTrainerDiffRecycle, labels_json=region_dataset_json())
    classes = make_trainer(nnUNetTrainerDiffRecycle)
    assert unwrap_network(regions.network).config.regions
    assert not unwrap_network(classes.network).config.regions
    state = regions.network.state_dict()
    rebuilt = nnUNetTrainerDiffRecycle.build_network_architecture(regions.plans_manager, regions.configuration_manager,
                                                                  1, 2, True)
    assert not rebuilt.config.regions
    rebuilt.load_state_dict(state)  # what nnU-Net's predictor does: the checkpoint's settings win
    assert rebuilt.config.regions


def test_region_pseudo_dice_counts_regions_above_one_half(nnunet_env):
    trainer = make_trainer(nnUNetTrainerDiffRecycle, labels_json=region_dataset_json(), deep_supervision=False)
    batch = random_batch(trainer, batch_size=2)
    fixed = torch.zeros((2, 2, *trainer.configuration_manager.patch_size))
    fixed[:, 0] = 5.0  # 'whole' everywhere, 'core' nowhere
    trainer.network = lambda *args: fixed
    result = trainer.validation_step(batch)
    target = batch["target"].float()
    assert result["tp_hard"].tolist() == [target[:, 0].sum().item(), 0]
    assert result["fp_hard"].tolist() == [(1 - target[:, 0]).sum().item(), 0]
    assert result["fn_hard"].tolist() == [0, target[:, 1].sum().item()]


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiff, nnUNetTrainerDiffSelfCond])
def test_ignored_voxels_are_zero_in_the_ground_truth_x0(nnunet_env, trainer_class):
    trainer = make_trainer(trainer_class, labels_json=ignore_dataset_json())
    batch, _, q_calls, loss = _recorded_step(trainer)
    labels = highest_resolution(batch["target"])
    ignored = (labels == 3).expand(-1, 3, *[-1] * (labels.ndim - 2))
    assert ignored.any()
    x0 = q_calls[0]["x0"]
    assert torch.all(x0[ignored] == 0)
    expected = labels_to_x0(labels.masked_fill(labels == 3, 0), 3)
    assert torch.equal(x0[~ignored], expected[~ignored])
    assert torch.isfinite(torch.as_tensor(loss))


def test_ignored_voxels_do_not_reach_the_loss(nnunet_env):
    trainer = make_trainer(nnUNetTrainerDiffRecycle, labels_json=ignore_dataset_json(), deep_supervision=False)
    target = random_batch(trainer, batch_size=2)["target"]
    ignored = target == 3
    logits = torch.randn((2, 3, *target.shape[2:]), generator=torch.Generator().manual_seed(0))
    changed = logits + 10 * torch.randn_like(logits) * ignored
    assert torch.allclose(trainer.loss(logits, target), trainer.loss(changed, target), atol=1e-6)
    elsewhere = logits + 10 * torch.randn_like(logits) * ~ignored
    assert not torch.allclose(trainer.loss(logits, target), trainer.loss(elsewhere, target), atol=1e-3)


def test_pseudo_dice_leaves_ignored_voxels_out(nnunet_env):
    trainer = make_trainer(nnUNetTrainerDiffRecycle, labels_json=ignore_dataset_json(), deep_supervision=False)
    batch = random_batch(trainer, batch_size=2)
    fixed = torch.zeros((2, 3, *trainer.configuration_manager.patch_size))
    fixed[:, 1] = 5.0  # class 1 everywhere
    trainer.network = lambda *args: fixed
    result = trainer.validation_step(batch)
    labels = batch["target"]
    valid = labels != 3
    assert result["tp_hard"].tolist() == [(labels == 1).sum().item(), 0]
    assert result["fp_hard"].tolist() == [((labels != 1) & valid).sum().item(), 0]
    assert result["fn_hard"].tolist() == [0, (labels == 2).sum().item()]


def test_a_batch_with_the_ignore_label_is_accepted_and_one_above_it_refused(nnunet_env):
    from nnunetv2_diffusion.training.batch_checks import TrainingDataError

    trainer = make_trainer(nnUNetTrainerDiffRecycle, labels_json=ignore_dataset_json(), deep_supervision=False)
    batch = random_batch(trainer, batch_size=2)
    trainer.train_step(batch)
    batch["target"][0, 0, 0, 0] = 4
    with pytest.raises(TrainingDataError, match="label values"):
        trainer.train_step(batch)


def test_regions_with_an_ignore_label_and_dice_focal_on_regions_are_refused(nnunet_env):
    both = region_dataset_json()
    both["labels"]["ignore"] = 3
    with pytest.raises(ValueError, match="region-based labels together with an 'ignore' label"):
        make_trainer(nnUNetTrainerDiffRecycle, labels_json=both)
    with pytest.raises(ValueError, match="'dice_focal' loss is written for exclusive labels"):
        make_trainer(nnUNetTrainerDiffRecycle_focalDice, labels_json=region_dataset_json())
