"""Per-case Dice (nnU-Net's own evaluator) and HD95 (symmetric 95th-percentile surface distance, in the image's
spacing units) for the benchmarks."""

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from scipy import ndimage


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing) -> float:
    """95th percentile of the distances from each surface voxel of one mask to the other mask's surface, both
    directions pooled. 0 when both masks are empty, NaN when exactly one is."""
    # 2D images come as (1, H, W): eroding across the singleton axis would strip every voxel and make the "surface"
    # the whole mask
    kept = [axis for axis, size in enumerate(reference.shape) if size > 1]
    reference, prediction = reference.squeeze(), prediction.squeeze()
    spacing = [spacing[axis] for axis in kept]
    if not reference.any() and not prediction.any():
        return 0.0
    if not reference.any() or not prediction.any():
        return float("nan")
    ref_surface, pred_surface = _surface(reference), _surface(prediction)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return float(np.percentile(np.concatenate([to_ref[pred_surface], to_pred[ref_surface]]), 95))


def evaluate_case(reference_file: str, prediction_file: str, reader_writer, labels: list[int]) -> dict:
    """{label: {'Dice': ..., 'HD95': ...}} for one case; Dice from nnU-Net's ``compute_metrics``."""
    nnunet = compute_metrics(reference_file, prediction_file, reader_writer, labels)["metrics"]
    reference, properties = reader_writer.read_seg(reference_file)
    prediction, _ = reader_writer.read_seg(prediction_file)
    spacing = properties["spacing"]
    return {label: {"Dice": float(nnunet[label]["Dice"]),
                    "HD95": hd95(reference[0] == label, prediction[0] == label, spacing)} for label in labels}
