"""A diffusion trainer asked for something it does not support stops at construction, before any data loading."""

import os

import pytest
import torch
from nnunet_fixtures import dataset_json, tiny_plans

from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle


def _build(trainer_class, labels_json):
    plans = tiny_plans()
    plans["continue_training"] = False
    return trainer_class(plans, "2d", 0, labels_json, torch.device("cpu"))


def test_region_based_labels_are_refused_before_any_folder_is_created(nnunet_env):
    regions = dataset_json(labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    with pytest.raises(ValueError, match="region-based labels"):
        _build(nnUNetTrainerDiffRecycle, regions)
    assert os.listdir(nnunet_env["nnUNet_results"]) == []


def test_ignore_label_is_refused():
    with pytest.raises(ValueError, match="'ignore' label"):
        _build(nnUNetTrainerDiffRecycle, dataset_json(labels={"background": 0, "fg": 1, "ignore": 2}))


@pytest.mark.parametrize("attribute,value,message", [
    ("num_diffusion_timesteps", 1, "num_timesteps must be >= 2"),
    ("noise_schedule", "quadratic", "unknown schedule"),
    ("default_sampler", "euler", "unknown sampler"),
    ("default_sampling_steps", 9, r"sampling_steps must be in \[1, 5\]"),
])
def test_invalid_diffusion_settings_are_refused_with_the_trainer_name(attribute, value, message):
    bad_class = type("nnUNetTrainerDiffBadSettings", (nnUNetTrainerDiffRecycle,), {attribute: value})
    with pytest.raises(ValueError, match=f"nnUNetTrainerDiffBadSettings: invalid diffusion settings: {message}"):
        _build(bad_class, dataset_json())
