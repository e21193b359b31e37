"""Uncertainty outputs of K diffusion samples: per-voxel maps and one row of case-level scores per case.

Maps, in nats, in the input image's geometry (``<output>/uncertainty/``):
- ``<case>_entropy``: entropy of the exported probabilities, i.e. of everything averaged into them (the K samples, the
  folds, the mirrors and overlapping tiles within each sample, and the stock model of an ensemble): the total
  uncertainty of the prediction that was written.
- ``<case>_mutual_information``: entropy of the diffusion model's mean probabilities minus the mean entropy of its
  samples (K per fold): the part of the uncertainty that comes from the samples disagreeing. Mirrors and tiles are
  averaged inside each sample, so they do not add to it; the stock model of an ensemble does not enter it.

For region labels the entropy is the sum over regions of each region's binary entropy.

Case-level score of class k (``uncertainty_per_case.csv``): 1 - soft Dice between the exported segmentation's mask of
k and the exported probability of k, ``1 - 2 sum(s_k p_k) / (sum s_k + sum p_k)``: 0 when every voxel of the mask is
certain and none outside it has any probability of k, larger the more probability mass disagrees with the mask. It is
the Dice the model itself expects to lose if its probabilities were right; NaN when both sums are 0.
"""

import csv
import json
import os

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

from nnunetv2_diffusion.diffusion.mask_encoding import entropy
from nnunetv2_diffusion.inference.export import remove_partial_folder, write_atomically, write_float_image

UNCERTAINTY_TABLE = "uncertainty_per_case.csv"
SCORES_SUFFIX = "_scores.json"


def entropy_of_probabilities(probabilities: np.ndarray, regions: bool = False) -> np.ndarray:
    """probabilities: (C, *spatial) summing to 1 over C (or R region probabilities) -> per-voxel entropy in nats,
    float32 (0 log 0 = 0): :func:`diffusion.mask_encoding.entropy` in float64 for numpy arrays."""
    return entropy(torch.from_numpy(np.asarray(probabilities, dtype=np.float64)), regions).float().numpy()


def transposed_spacing(properties: dict, plans_manager) -> list[float]:
    """The image's spacing (``properties["spacing"]``, the image's own axis order) in the plans' transposed order, that
    of ``shape_before_cropping`` and the preprocessed arrays."""
    return [properties["spacing"][axis] for axis in plans_manager.transpose_forward]


def map_to_input_geometry(values: np.ndarray, properties: dict, configuration_manager, plans_manager) -> np.ndarray:
    """A per-voxel map of the preprocessed case (*spatial) -> the input image's layout, the way nnU-Net's export
    treats probabilities: resampled with the configuration's probability resampling, zeros outside the crop (the
    region nnU-Net's preprocessing cut away is certain background), transposed back."""
    spacing = transposed_spacing(properties, plans_manager)
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape) else \
        [spacing[0], *configuration_manager.spacing]
    resampled = np.asarray(configuration_manager.resampling_fn_probabilities(values[None].astype(np.float32), shape,
                                                                             current, spacing))[0]
    full = insert_crop_into_image(np.zeros(properties["shape_before_cropping"], dtype=np.float32), resampled,
                                  properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose(plans_manager.transpose_backward)


NOMINAL_SPACING_FACTOR = 999
"""nnU-Net's readers give a 2D image a third axis of extent 1 and a spacing 999 times its largest pixel spacing
(``NaturalImage2DIO``, PNG/BMP/TIFF: 999 with pixels of 1; ``SimpleITKIO``: 999 x the largest pixel spacing)."""


def volume_per_voxel(spacing, shape) -> float:
    """Volume of one voxel in the image's spacing units: the product of ``spacing`` over the axes of ``shape``, both in
    one axis order, leaving out the nominal axis of a 2D image (extent 1, spacing 999 x the largest other one), so that
    a 2D image's "volume" is its area, not 999 times it."""
    spacing = [float(s) for s in spacing]
    kept = [s for axis, (s, n) in enumerate(zip(spacing, shape, strict=True))
            if not (n == 1 and s >= 0.999 * NOMINAL_SPACING_FACTOR * max(spacing[:axis] + spacing[axis + 1:]))]
    return float(np.prod(kept))


def case_scores(segmentation: np.ndarray, probabilities: np.ndarray, labels: dict, voxel_volume: float,
                regions: bool = False) -> dict:
    """The CSV columns of one case: per foreground label (or region), the predicted volume (voxel count times
    ``voxel_volume``, from :func:`volume_per_voxel`: mm^3 for medical images, pixels for 2D images without a physical
    spacing) and the score of the module docstring.

    labels: dataset.json 'labels'; probabilities: (C, *spatial) with channel = label id, or (R, *spatial) in the
    order of the regions in ``labels``, each region's mask being its probability > 0.5 as in nnU-Net's export."""
    row = {}
    foreground = [(name, label) for name, label in labels.items() if name not in ("background", "ignore")]
    for channel, (name, label) in enumerate(foreground):
        p = probabilities[channel if regions else label].astype(np.float64)
        mask = p > 0.5 if regions else segmentation == label
        total = mask.sum() + p.sum()
        row[f"{name}_volume"] = float(mask.sum() * voxel_volume)
        row[f"{name}_uncertainty"] = float(1 - 2 * p[mask].sum() / total) if total else float("nan")
    return row


def export_uncertainty_maps(logits: np.ndarray, mutual_information: np.ndarray, properties: dict,
                            configuration_manager, plans_manager, dataset_json: dict,
                            output_file_truncated: str) -> dict:
    """Writes ``<output>_entropy`` and ``<output>_mutual_information`` (maps of the module docstring) and the case's
    CSV row as ``<output>_scores.json``; returns the row. logits: (C, *preprocessed) as handed to nnU-Net's export
    (``mask_encoding.export_logits``); mutual_information: (*preprocessed) float32. Runs in nnU-Net's export workers
    (module-level, picklable arguments)."""
    label_manager = plans_manager.get_label_manager(dataset_json)
    segmentation, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, return_probabilities=True)
    writer = plans_manager.image_reader_writer_class()
    ending = dataset_json["file_ending"]
    regions = label_manager.has_regions
    write_float_image(entropy_of_probabilities(probabilities, regions), f"{output_file_truncated}_entropy", ending,
                      properties, writer)
    write_float_image(map_to_input_geometry(mutual_information, properties, configuration_manager, plans_manager),
                      f"{output_file_truncated}_mutual_information", ending, properties, writer)
    volume = volume_per_voxel(transposed_spacing(properties, plans_manager), properties["shape_before_cropping"])
    row = {"case": os.path.basename(output_file_truncated),
           **case_scores(segmentation, probabilities, dataset_json["labels"], volume, regions)}
    # key order kept: the table's columns follow it
    write_atomically(f"{output_file_truncated}{SCORES_SUFFIX}", lambda path: save_json(row, path, sort_keys=False))
    return row


def write_uncertainty_table(folder: str) -> str:
    """``<folder>/uncertainty_per_case.csv`` from every ``<case>_scores.json`` in ``folder``, one row per case, sorted:
    rebuilt from the per-case files, so a continued run or the other part of a split prediction keeps its rows."""
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(SCORES_SUFFIX):
            with open(os.path.join(folder, name)) as f:
                rows.append(json.load(f))
    path = os.path.join(folder, UNCERTAINTY_TABLE)

    def write_table(staged: str) -> None:
        with open(staged, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write_table)
    remove_partial_folder(folder)
    return path
