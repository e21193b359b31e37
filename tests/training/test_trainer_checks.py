"""A diffusion trainer asked for something it does not support stops at construction, before any data loading;
a batch it cannot train on stops training naming its cases."""

import os

import numpy as np
import pytest
import torch
from nnunet_fixtures import dataset_json, make_trainer, random_batch, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_diffusion.training import (
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_blockFiLM,
    nnUNetTrainerDiffSelfCond,
)
from nnunetv2_diffusion.training.batch_checks import TrainingDataError


def _build(trainer_class, labels_json):
    plans = tiny_plans()
    plans["continue_training"] = False
    return trainer_class(plans, "2d", 0, labels_json, torch.device("cpu"))


def test_regions_with_an_ignore_label_are_refused_before_any_folder_is_created(nnunet_env):
    both = dataset_json(labels={"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2])
    with pytest.raises(ValueError, match="region-based labels together with an 'ignore' label"):
        _build(nnUNetTrainerDiffRecycle, both)
    assert os.listdir(nnunet_env["nnUNet_results"]) == []


@pytest.mark.parametrize("attribute,value,message", [
    ("num_diffusion_timesteps", 1, "num_timesteps must be >= 2"),
    ("noise_schedule", "quadratic", "unknown schedule"),
    ("default_sampler", "euler", "unknown sampler"),
    ("default_sampling_steps", 9, r"steps=9 exceeds the 5 timesteps.*\[1, 5\]"),
])
def test_invalid_diffusion_settings_are_refused_with_the_trainer_name(attribute, value, message):
    bad_class = type("nnUNetTrainerDiffBadSettings", (nnUNetTrainerDiffRecycle,), {attribute: value})
    with pytest.raises(ValueError, match=f"nnUNetTrainerDiffBadSettings: invalid diffusion settings: {message}"):
        _build(bad_class, dataset_json())


@pytest.mark.parametrize("damage,message", [
    ("nan_image", r"training case\(s\) case_b in .*: image holds NaN or infinite values"),
    ("label_3", r"training case\(s\) case_b in .*: label values \[3.0\] are not class ids 0..2"),
    ("negative_label", r"training case\(s\) case_b in .*: label values \[-1.0\] are not class ids 0..2"),
    ("fractional_label", r"training case\(s\) case_b in .*: label values \[1.5\] are not class ids 0..2"),
])
def test_a_bad_batch_names_its_case_before_the_network_sees_it(damage, message):
    trainer = make_trainer(nnUNetTrainerDiffRecycle)
    batch = {**random_batch(trainer), "keys": ["case_a", "case_b"]}
    if damage == "nan_image":
        batch["data"][1, 0, 3, 4] = float("nan")
    else:
        batch["target"][0][1, 0, 5, 6] = {"label_3": 3, "negative_label": -1, "fractional_label": 1.5}[damage]
    before = [p.clone() for p in trainer.network.parameters()]
    for step in (trainer.train_step, trainer.validation_step):
        with pytest.raises(TrainingDataError, match=message):
            step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))


def test_a_good_batch_passes_the_checks():
    trainer = make_trainer(nnUNetTrainerDiffRecycle)
    assert np.isfinite(trainer.train_step({**random_batch(trainer), "keys": ["case_a", "case_b"]})["loss"])


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiffRecycle_blockFiLM, nnUNetTrainerDiffSelfCond])
def test_batchnorm_plans_under_ddp_are_refused_where_syncbatchnorm_breaks_them(nnunet_env, monkeypatch,
                                                                               trainer_class):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    plans = tiny_plans()
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["norm_op"] = "torch.nn.modules.batchnorm.BatchNorm2d"
    with pytest.raises(ValueError, match="BatchNorm2d, which nnU-Net turns into SyncBatchNorm under -num_gpus 2"):
        trainer_class(plans, "2d", 0, dataset_json(), torch.device("cpu"))
    # 'stage' conditioning without the estimate pass passes the check (a trainer cannot be built on a fake group)
    nnUNetTrainerDiffRecycle._check_distributed(PlansManager(plans).get_configuration("2d"), "2d")


def test_more_ranks_than_samples_is_refused_with_one_message(nnunet_env, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    with pytest.raises(ValueError, match="-num_gpus 4 needs a batch of at least 4, but configuration 2d has "
                                         "batch_size 2"):
        _build(nnUNetTrainerDiffRecycle, dataset_json())
