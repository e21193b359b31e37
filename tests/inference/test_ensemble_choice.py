"""The ensemble weight is chosen on validation probabilities and then used by --ensemble_with."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_diffusion.inference.ensemble_choice import (
    CHOICE_FILE,
    best_weight,
    choose_ensemble_weight,
    foreground_dice,
    validation_dice_by_weight,
)
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters


def test_foreground_dice_follows_nnunets_convention():
    reference = np.array([[0, 1, 1, 2]])
    np.testing.assert_allclose(foreground_dice(np.array([[0, 1, 0, 0]]), reference, [1, 2, 3]),
                               [2 / 3, 0.0, np.nan])


def test_foreground_dice_of_regions_and_with_an_ignore_label():
    reference = np.array([0, 1, 2, 2, 3])
    segmentation = np.array([0, 2, 2, 1, 0])
    # region (1, 2) is voxels {1, 2, 3} in both; region (2,) is {2, 3} in the reference, {1, 2} predicted
    np.testing.assert_allclose(foreground_dice(segmentation, reference, [(1, 2), (2,)]), [1.0, 0.5])
    # the last voxel is ignored (label 3): predicting 1 there costs nothing
    reference, segmentation = np.array([0, 1, 1, 3]), np.array([0, 1, 1, 1])
    np.testing.assert_allclose(foreground_dice(segmentation, reference, [1], ignore_label=3), [1.0])
    np.testing.assert_allclose(foreground_dice(segmentation, reference, [1]), [0.8])


def test_region_ensembles_are_segmented_as_nnunet_exports_them(tmp_path):
    # regions (1, 2) and (2,), painted in regions_class_order (1, 2): a voxel above 0.5 in both is label 2
    manager = LabelManager({"background": 0, "outer": (1, 2), "inner": 2}, regions_class_order=[1, 2])
    reference = np.array([0, 1, 2, 2])
    right = np.array([[0.1, 0.9, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9]])
    wrong = np.array([[0.1, 0.9, 0.9, 0.9], [0.1, 0.9, 0.1, 0.1]])  # inner region misplaced
    diffusion = [_write_probabilities(tmp_path / "d", "a", right)]
    stock = [_write_probabilities(tmp_path / "s", "a", wrong)]
    dice = validation_dice_by_weight(diffusion, stock, [reference], manager)
    assert dice[0.0] == 1.0 and dice[1.0] == pytest.approx((1.0 + 0.0) / 2)


def test_probabilities_of_different_grids_are_refused_naming_both_files(tmp_path):
    manager = LabelManager({"background": 0, "a": 1}, regions_class_order=None)
    diffusion = [_write_probabilities(tmp_path / "d", "a", np.full((2, 4), 0.5))]
    stock = [_write_probabilities(tmp_path / "s", "a", np.full((2, 5), 0.5))]
    with pytest.raises(DiffusionPredictorError, match=r"d/a\.npz and .*s/a\.npz: .*different shapes"):
        validation_dice_by_weight(diffusion, stock, [np.zeros(4)], manager)


def _write_probabilities(folder, name, probabilities):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".npz")
    np.savez(path, probabilities=probabilities.astype(np.float16))
    return path


def test_the_weight_is_where_the_two_models_complement_each_other(tmp_path):
    # case a: the diffusion model is right (p 0.9), the stock model wrong (0.6 for the wrong class); case b the other
    # way round: every w in (0.2, 0.8) gets both right, neither model alone does
    reference_a, reference_b = np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])

    def confident(reference, p_right):
        right = np.stack([1 - reference, reference]).astype(float)
        return p_right * right + (1 - p_right) * (1 - right)

    diffusion = [_write_probabilities(tmp_path / "d", "a", confident(reference_a, 0.9)),
                 _write_probabilities(tmp_path / "d", "b", confident(reference_b, 0.4))]
    stock = [_write_probabilities(tmp_path / "s", "a", confident(reference_a, 0.4)),
             _write_probabilities(tmp_path / "s", "b", confident(reference_b, 0.9))]
    dice = validation_dice_by_weight(diffusion, stock, [reference_a, reference_b],
                                     LabelManager({"background": 0, "c1": 1}, None))
    assert dice[0.0] < 1 and dice[1.0] < 1
    assert {w for w, d in dice.items() if d == 1.0} == {w for w in dice if 0.2 < w < 0.8}
    assert best_weight(dice) == 0.5


def test_ties_go_to_the_plain_average():
    assert best_weight({0.0: 0.8, 0.4: 0.9, 0.6: 0.9, 0.5: 0.9, 1.0: 0.7}) == 0.5
    assert best_weight({0.0: 0.8, 0.3: 0.9, 0.9: 0.9, 1.0: 0.7}) == 0.3


def _validation_folder(model_folder, cases, rng, num_classes=3):
    for case in cases:
        probabilities = rng.dirichlet(np.ones(num_classes), size=(12, 12)).transpose(2, 0, 1)[:, None]
        _write_probabilities(os.path.join(model_folder, "fold_0", "validation"), case, probabilities)


def _probabilities_favouring(labels, p_favoured, num_classes=3):
    """(C, *labels.shape) probabilities: p_favoured on each voxel's class in ``labels``, the rest shared evenly."""
    favoured = np.eye(num_classes)[labels].transpose(-1, *range(labels.ndim))
    return p_favoured * favoured + (1 - p_favoured) / (num_classes - 1) * (1 - favoured)


def test_choose_and_predict_use_the_recorded_weight(nnunet_env, tmp_path):
    # the diffusion model is right but unsure (0.6), the stock model sure and wrong (0.9 on the next class): the
    # ensemble is right only while w, the stock model's weight, is below 0.32, so the choice is 0.3 (swapping the
    # two models would give 0.7)
    results = nnunet_env["nnUNet_results"]
    diffusion = write_model_folder(results, nnUNetTrainerDiffRecycle_10iters)
    stock = write_model_folder(results, nnUNetTrainer)
    rng = np.random.default_rng(0)
    gt = tmp_path / "gt"
    gt.mkdir()
    for case in ["case_0", "case_1"]:
        labels = rng.integers(0, 3, (1, 12, 12))
        sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.uint8)), str(gt / f"{case}.nii.gz"))
        for folder, favoured, p in ((diffusion, labels, 0.6), (stock, (labels + 1) % 3, 0.9)):
            _write_probabilities(os.path.join(folder, "fold_0", "validation"), case,
                                 _probabilities_favouring(favoured, p))
    record = choose_ensemble_weight(diffusion, stock, [0], str(gt))
    stored = json.load(open(os.path.join(diffusion, CHOICE_FILE)))[os.path.realpath(stock)]
    assert stored == record and record["validation_cases"] == 2 and len(record["validation_dice_by_weight"]) == 21
    assert record["weight"] == 0.3
    assert record["diffusion_alone"] == 1.0 and record["stock_alone"] == 0.0
    assert {w for w, d in record["validation_dice_by_weight"].items() if d == 1.0} == {
        str(w) for w in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)}

    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False)
    predictor.initialize_from_trained_model_folder(diffusion, (0,))
    predictor.initialize_ensemble_model(stock, (0,))
    assert predictor.ensemble_weight == 0.3
    assert predictor.settings()["ensemble_weight_source"] == "validation"
    given = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, ensemble_weight=0.25)
    given.initialize_from_trained_model_folder(diffusion, (0,))
    given.initialize_ensemble_model(stock, (0,))
    assert given.ensemble_weight == 0.25
    os.remove(os.path.join(diffusion, CHOICE_FILE))  # nothing recorded, nothing given: the plain average
    default = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False)
    default.initialize_from_trained_model_folder(diffusion, (0,))
    default.initialize_ensemble_model(stock, (0,))
    assert default.ensemble_weight == 0.5 and default.settings()["ensemble_weight_source"] == "default"


def test_models_that_validated_different_cases_are_refused(nnunet_env, tmp_path):
    results = nnunet_env["nnUNet_results"]
    diffusion = write_model_folder(results, nnUNetTrainerDiffRecycle_10iters)
    stock = write_model_folder(results, nnUNetTrainer)
    rng = np.random.default_rng(0)
    _validation_folder(diffusion, ["case_0"], rng)
    _validation_folder(stock, ["case_1"], rng)
    with pytest.raises(DiffusionPredictorError, match="validated different cases"):
        choose_ensemble_weight(diffusion, stock, [0], str(tmp_path))
    with pytest.raises(DiffusionPredictorError, match="no validation probabilities"):
        choose_ensemble_weight(diffusion, os.path.join(results, "missing"), [0], str(tmp_path))
