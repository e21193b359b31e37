"""Tiny trained-model folders and raw cases for the inference tests: no planning, preprocessing or training.

A model folder is what nnU-Net's predictor reads: ``plans.json``, ``dataset.json`` and ``fold_X/checkpoint_final.pth``,
here written from a trainer built by ``make_trainer`` (random weights, the hand-made tiny plans).
"""

import json
import os

import numpy as np
import SimpleITK as sitk
import torch
from nnunet_fixtures import dataset_json, make_trainer, tiny_plans

DATASET = "Dataset999_Unit"


def write_model_folder(results_root, trainer_class, dim: int = 2, num_classes: int = 3, folds=(0,), seed: int = 0,
                       patch_size: tuple | None = None, labels_json: dict | None = None, residual: bool = False,
                       plans: dict | None = None, configuration: str | None = None) -> str:
    """A model folder ``<results>/Dataset999_Unit/<trainer>__nnUNetPlans__<config>`` with one checkpoint per fold
    (different random weights per fold); returns its path. ``labels_json``: the dataset.json (default:
    ``num_classes`` exclusive classes); ``plans`` and ``configuration``: other plans than :func:`tiny_plans`."""
    plans_kwargs = {"patch_size": patch_size} if patch_size else {}
    if residual:
        plans_kwargs["residual"] = True
    plans = plans or tiny_plans(dim, **plans_kwargs)
    configuration = configuration or ("2d" if dim == 2 else "3d_fullres")
    folder = os.path.join(str(results_root), DATASET, f"{trainer_class.__name__}__nnUNetPlans__{configuration}")
    for index, fold in enumerate(folds):
        torch.manual_seed(seed + index)
        trainer = make_trainer(trainer_class, dim=dim, num_classes=num_classes, deep_supervision=False,
                               labels_json=labels_json, plans=plans, configuration=configuration)
        trainer.inference_allowed_mirroring_axes = tuple(range(dim))
        os.makedirs(os.path.join(folder, f"fold_{fold}"), exist_ok=True)
        trainer.save_checkpoint(os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth"))
    with open(os.path.join(folder, "plans.json"), "w") as f:
        json.dump(plans, f)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(labels_json or dataset_json(num_classes), f)
    return folder


def write_raw_case(folder, name: str, shape: tuple, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   seed: int = 0) -> str:
    """One single-channel image ``<folder>/<name>_0000.nii.gz``; 2D shapes are stored with a singleton first axis.
    Returns the file path."""
    os.makedirs(folder, exist_ok=True)
    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    image = sitk.GetImageFromArray(array[None] if len(shape) == 2 else array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path = os.path.join(folder, f"{name}_0000.nii.gz")
    sitk.WriteImage(image, path)
    return path
