"""Refuse a training batch whose image or labels cannot be right, naming the cases it came from.

nnU-Net passes whatever the preprocessed files hold to the network: a NaN image surfaces as a NaN loss, a label
id outside ``dataset.json`` as an index error deep inside torch (``scatter_``). Checking each batch costs one
``isfinite`` and one min/max over tensors already in memory; the per-case search runs only when a check fails.
"""

import torch


class TrainingDataError(ValueError):
    """A training batch holds NaN/inf image values or labels outside the dataset's classes; names the cases."""


def check_training_batch(data: torch.Tensor, labels: torch.Tensor, num_classes: int, keys,
                         preprocessed_folder: str) -> None:
    """data: (B, channels, *patch) float; labels: (B, 1, *patch) class ids, or (B, R, *patch) 0/1 region masks
    (num_classes 2), valid in [0, num_classes - 1];
    keys: the B case identifiers nnU-Net's loader puts in ``batch['keys']`` (or None)."""
    names = list(keys) if keys is not None else [f"#{i} of the batch" for i in range(data.shape[0])]
    if _has_non_finite(data):
        bad = [name for name, sample in zip(names, data, strict=True) if _has_non_finite(sample)]
        raise TrainingDataError(
            f"training case(s) {', '.join(map(str, bad))} in {preprocessed_folder}: image holds NaN or infinite "
            f"values after nnU-Net's preprocessing; check the raw images (nnUNetv2_plan_and_preprocess "
            f"--verify_dataset_integrity) and preprocess again")
    if _has_foreign_labels(labels, num_classes):
        bad = [name for name, sample in zip(names, labels, strict=True) if _has_foreign_labels(sample, num_classes)]
        values = sorted({v for v in labels.unique().tolist() if v < 0 or v > num_classes - 1 or v != round(v)})
        raise TrainingDataError(
            f"training case(s) {', '.join(map(str, bad))} in {preprocessed_folder}: label values {values} are not "
            f"class ids 0..{num_classes - 1} of dataset.json 'labels'; fix the labels or dataset.json and preprocess "
            f"again")


def _has_non_finite(image: torch.Tensor) -> bool:
    return not bool(torch.isfinite(image).all())


def _has_foreign_labels(labels: torch.Tensor, num_classes: int) -> bool:
    """Any value below 0, above num_classes - 1, or not a whole number (one min/max pass plus one rounding).
    nnU-Net's region targets are bool, always valid."""
    if labels.dtype == torch.bool:
        return False
    low, high = torch.aminmax(labels)
    return bool(low < 0 or high > num_classes - 1) or not torch.equal(labels, labels.round())
