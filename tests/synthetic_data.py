"""Tiny synthetic nnU-Net datasets (discs and boxes in noise) for fast tests, 2D or 3D, 1 or more classes."""

import json
import os

import numpy as np
import SimpleITK as sitk


def make_case(rng: np.random.Generator, shape: tuple, num_foreground: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32) and label map (uint8) of ``shape``: label k is a shape whose intensity is k + 1 noise
    standard deviations above the background, at a random position and size."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(1, num_foreground + 1):
        radius = rng.uniform(0.12, 0.22) * min(shape)
        centre = np.array([rng.uniform(radius + 1, s - radius - 1) for s in shape], dtype=np.float32)
        offset = np.abs(grid - centre.reshape(-1, *[1] * len(shape)))
        inside = (np.sqrt((offset ** 2).sum(0)) < radius) if k % 2 else (offset.max(0) < radius * 0.8)
        labels[inside] = k
    image = rng.normal(0.0, 1.0, shape).astype(np.float32) + 2.0 * labels.astype(np.float32)
    return image, labels


def write_raw_dataset(raw_root: str, dataset_id: int, *, name: str = "Synthetic", num_train: int = 12,
                      num_test: int = 2, shape: tuple = (48, 48), num_foreground: int = 2, seed: int = 0) -> str:
    """Writes ``DatasetXXX_<name>`` in nnU-Net's raw layout (.nii.gz, 2D stored with a singleton first axis) and
    returns its folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(num_train + num_test):
        image, labels = make_case(rng, shape, num_foreground)
        split = "Tr" if i < num_train else "Ts"
        case = f"case_{i:03d}"
        for array, path in ((image, f"images{split}/{case}_0000.nii.gz"), (labels, f"labels{split}/{case}.nii.gz")):
            volume = sitk.GetImageFromArray(array[None] if len(shape) == 2 else array)
            volume.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(volume, os.path.join(folder, path))
    dataset_json = {
        "channel_names": {"0": "synthetic"},
        "labels": {"background": 0, **{f"class_{k}": k for k in range(1, num_foreground + 1)}},
        "numTraining": num_train,
        "file_ending": ".nii.gz",
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder
