"""The ensemble weight of a diffusion model with a stock model, chosen on validation cases, never on test cases.

Both models' final validation (``nnUNetv2_train ... --npz``, or ``--val --npz`` afterwards) leaves one
``fold_X/validation/<case>.npz`` of probabilities per validation case, exported into the case's original geometry.
Both models preprocess alike (the predictor refuses an ensemble partner that does not), so the two files of a case
are the same grid: the ensemble ``(1 - w) p_diffusion + w p_stock`` is formed there for every w of a grid, segmented
as nnU-Net's export does (argmax; regions thresholded at 0.5), and scored with the Dice of every foreground label
(region) against nnU-Net's ``gt_segmentations``, ignore-label voxels left out. The best w
(ties: the one nearest 0.5) is written to ``<diffusion model folder>/ensemble_choice.json`` under the stock model's
folder, and ``nnUNetv2_predict_diffusion --ensemble_with <that folder>`` without ``--ensemble_weight`` uses it.

Exported probabilities are resampled linearly from the preprocessed grid, so their average equals, up to that
interpolation, the average the predictor forms in preprocessed space.

    nnUNetv2_diffusion_choose_ensemble -m <diffusion model folder> --ensemble_with <stock model folder> -f 0
"""

import argparse
import json
import os

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, subfiles

from nnunetv2_diffusion.checkpoint_io import atomic_save
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.input_checks import read_json_file

CHOICE_FILE = "ensemble_choice.json"
DEFAULT_ENSEMBLE_WEIGHT = 0.5
WEIGHTS = tuple(round(w, 2) for w in np.linspace(0, 1, 21))
"""The weights tried: 0, 0.05, ..., 1 (0: the diffusion model alone, 1: the stock model alone)."""


def _key(stock_folder: str) -> str:
    return os.path.realpath(stock_folder)


def read_ensemble_choice(model_folder: str, stock_folder: str) -> dict | None:
    """The recorded choice for this stock model, or None if none was made."""
    path = join(model_folder, CHOICE_FILE)
    if not isfile(path):
        return None
    return read_json_file(path).get(_key(stock_folder))


def foreground_dice(segmentation: np.ndarray, reference: np.ndarray, labels: list, ignore_label: int | None = None
                    ) -> np.ndarray:
    """Dice of each label or region (a tuple of label ids) in nnU-Net's convention: NaN where both masks are empty,
    voxels of ``ignore_label`` in the reference left out. float64 (len(labels),)."""
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    valid = np.ones(reference.shape, dtype=bool) if ignore_label is None else reference != ignore_label
    dice = np.full(len(labels), np.nan)
    for index, label in enumerate(labels):
        predicted = region_or_label_to_mask(segmentation, label) & valid
        true = region_or_label_to_mask(reference, label) & valid
        total = predicted.sum() + true.sum()
        if total:
            dice[index] = 2 * np.logical_and(predicted, true).sum() / total
    return dice


def case_dice_by_weight(p_diffusion: np.ndarray, p_stock: np.ndarray, reference: np.ndarray, label_manager,
                        weights=WEIGHTS) -> dict[float, np.ndarray]:
    """Dice of every foreground label (region) of one case's ensemble ``(1 - w) p_diffusion + w p_stock`` at every
    weight w, segmented as nnU-Net's export does (argmax, or regions thresholded at 0.5 and painted in
    ``regions_class_order``): {w: float64 (labels,)}, NaN where prediction and reference are both empty.

    p_diffusion, p_stock: probabilities (C, *spatial) in [0, 1] on the same grid; reference: label map (*spatial) or
    (1, *spatial)."""
    if p_diffusion.shape != p_stock.shape:
        raise DiffusionPredictorError(f"probabilities of different shapes {p_diffusion.shape} vs {p_stock.shape}: "
                                      f"not the same preprocessing")
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    reference = reference.reshape(p_diffusion.shape[1:])
    return {w: foreground_dice(np.asarray(label_manager.convert_probabilities_to_segmentation(
        (1 - w) * p_diffusion + w * p_stock)), reference, labels, label_manager.ignore_label) for w in weights}


def validation_dice_by_weight(diffusion_files: list[str], stock_files: list[str], references: list[np.ndarray],
                              label_manager, weights=WEIGHTS) -> dict[float, float]:
    """Mean over labels (regions) of the per-label mean (over cases, NaN ignored) Dice of the ensemble at every
    weight (:func:`case_dice_by_weight`).

    diffusion_files, stock_files: ``.npz`` with 'probabilities' (C, *spatial) per case, in the same order as
    ``references`` (label maps (*spatial) or (1, *spatial))."""
    scores = {w: [] for w in weights}
    for diffusion_file, stock_file, reference in zip(diffusion_files, stock_files, references, strict=True):
        p_diffusion = np.load(diffusion_file)["probabilities"].astype(np.float32)
        p_stock = np.load(stock_file)["probabilities"].astype(np.float32)
        try:
            dice = case_dice_by_weight(p_diffusion, p_stock, reference, label_manager, weights)
        except DiffusionPredictorError as e:
            raise DiffusionPredictorError(f"{diffusion_file} and {stock_file}: {e}") from None
        for w in weights:
            scores[w].append(dice[w])
    return {w: float(np.nanmean(np.nanmean(np.stack(s), axis=0))) for w, s in scores.items()}


def best_weight(dice_by_weight: dict[float, float]) -> float:
    """The weight of the highest Dice; among equal ones, the nearest to 0.5 (the plain average)."""
    return max(dice_by_weight, key=lambda w: (round(dice_by_weight[w], 10), -abs(w - DEFAULT_ENSEMBLE_WEIGHT)))


def _validation_files(model_folder: str, folds: list) -> dict[str, str]:
    files = {}
    for fold in folds:
        folder = join(model_folder, f"fold_{fold}", "validation")
        found = subfiles(folder, suffix=".npz", join=False) if os.path.isdir(folder) else []
        if not found:
            raise DiffusionPredictorError(f"{folder} holds no validation probabilities (.npz); run the final "
                                          f"validation with them: nnUNetv2_train ... -f {fold} --val --npz")
        files.update({name[:-4]: join(folder, name) for name in found})
    return files


def choose_ensemble_weight(model_folder: str, stock_folder: str, folds: list, gt_folder: str | None = None) -> dict:
    """Chooses w on the validation cases of ``folds`` and records it; returns the record."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = read_json_file(join(model_folder, "dataset.json"))
    plans = PlansManager(read_json_file(join(model_folder, "plans.json")))
    if gt_folder is None:
        gt_folder = join(os.environ.get("nnUNet_preprocessed", ""), plans.dataset_name, "gt_segmentations")
    diffusion, stock = _validation_files(model_folder, folds), _validation_files(stock_folder, folds)
    if diffusion.keys() != stock.keys():
        raise DiffusionPredictorError(f"{model_folder} and {stock_folder} validated different cases "
                                      f"({sorted(diffusion.keys() ^ stock.keys())[:5]} ...): not the same split")
    reader = plans.image_reader_writer_class()
    ending = dataset_json["file_ending"]
    cases = sorted(diffusion)
    references = []
    for case in cases:
        path = join(gt_folder, case + ending)
        if not isfile(path):
            raise DiffusionPredictorError(f"reference segmentation {path} does not exist (set nnUNet_preprocessed or "
                                          f"pass --gt_folder)")
        references.append(reader.read_seg(path)[0])
    dice = validation_dice_by_weight([diffusion[c] for c in cases], [stock[c] for c in cases], references,
                                     plans.get_label_manager(dataset_json))
    record = {"weight": best_weight(dice), "folds": folds, "validation_cases": len(cases),
              "validation_dice_by_weight": {str(w): d for w, d in dice.items()},
              "diffusion_alone": dice[0.0], "stock_alone": dice[1.0]}
    path = join(model_folder, CHOICE_FILE)
    choices = read_json_file(path) if isfile(path) else {}
    choices[_key(stock_folder)] = record
    def write(temporary: str) -> None:
        with open(temporary, "w") as f:
            json.dump(choices, f, indent=1)

    atomic_save(write, path)
    return record


def choose_ensemble_entry_point() -> None:
    parser = argparse.ArgumentParser(description="Choose the weight of a diffusion + stock nnU-Net ensemble on the "
                                                 "folds' validation cases and record it in the diffusion model folder.")
    parser.add_argument("-m", required=True, help="diffusion model folder (<trainer>__<plans>__<configuration>)")
    parser.add_argument("--ensemble_with", required=True, help="stock nnU-Net model folder")
    parser.add_argument("-f", nargs="+", default=["0"], help="folds whose validation cases are used (default: 0)")
    parser.add_argument("--gt_folder", default=None, help="reference segmentations (default: nnU-Net's "
                                                           "gt_segmentations of the dataset)")
    args = parser.parse_args()
    folds = [f if f == "all" else int(f) for f in args.f]
    try:
        record = choose_ensemble_weight(args.m, args.ensemble_with, folds, args.gt_folder)
    except DiffusionPredictorError as e:
        parser.exit(2, f"nnUNetv2_diffusion_choose_ensemble: error: {e}\n")
    chosen = record["validation_dice_by_weight"][str(record["weight"])]
    print(f"ensemble weight of the stock model: {record['weight']} (validation Dice {chosen:.4f}; diffusion alone"
          f" {record['diffusion_alone']:.4f}, stock alone {record['stock_alone']:.4f}, "
          f"{record['validation_cases']} cases); recorded in {join(args.m, CHOICE_FILE)}")
