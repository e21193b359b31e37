"""Every strategy trains on the plans nnU-Net writes: plain and residual-encoder U-Nets, 2D and 3D, and the cascade's
second stage with its one-hot previous-stage channels; both predictors take the cascade's previous-stage input."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunet_fixtures import cascade_plans, make_trainer, random_batch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.networks.diffusion_unet import first_convolution
from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_blockFiLM,
    nnUNetTrainerDiffRecycleNext,
    nnUNetTrainerDiffSelfCond,
)

STRATEGIES = [nnUNetTrainerDiff, nnUNetTrainerDiffSelfCond, nnUNetTrainerDiffRecycleNext, nnUNetTrainerDiffRecycle,
              nnUNetTrainerDiffRecycle_blockFiLM]


@pytest.mark.parametrize("dim,residual", [(2, False), (3, False), (2, True), (3, True)])
@pytest.mark.parametrize("trainer_class", STRATEGIES, ids=lambda c: c.__name__)
def test_every_strategy_takes_a_step_on_plain_and_residual_plans(nnunet_env, trainer_class, dim, residual):
    trainer = make_trainer(trainer_class, dim=dim, residual=residual)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(random_batch(trainer))["loss"]
    assert np.isfinite(loss)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))
    assert moved > len(before) // 2


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiffRecycle, nnUNetTrainerDiffSelfCond],
                         ids=lambda c: c.__name__)
def test_the_cascade_stage_trains_with_the_previous_stage_channels(nnunet_env, trainer_class):
    trainer = make_trainer(trainer_class, plans=cascade_plans(), configuration="3d_cascade_fullres")
    assert trainer.is_cascaded and trainer.num_input_channels == 1 + 2  # image + one-hot of the 2 foreground labels
    network = trainer.network
    assert network.num_image_channels == 3
    mask_channels = 3 * (2 if trainer.self_conditioning else 1)
    assert first_convolution(network.unet).weight.shape[1] == 3 + mask_channels
    assert np.isfinite(trainer.train_step(random_batch(trainer))["loss"])


def test_missing_previous_stage_predictions_stop_training_naming_the_folder(nnunet_env, monkeypatch):
    trainer = make_trainer(nnUNetTrainerDiffRecycle, plans=cascade_plans(), configuration="3d_cascade_fullres")
    monkeypatch.setattr(trainer, "do_split", lambda: (["case_a", "1.2.840.7"], ["case_c"]))
    folder = trainer.folder_with_segs_from_previous_stage
    assert folder.endswith(os.path.join("nnUNetTrainerDiffRecycle__nnUNetPlans__3d_lowres", "predicted_next_stage",
                                        "3d_cascade_fullres"))
    with pytest.raises(FileNotFoundError, match="lacks the 3d_lowres predictions of 3 case"):
        trainer.check_previous_stage_predictions()
    os.makedirs(folder)
    for case in ("case_a", "case_c"):
        open(os.path.join(folder, f"{case}.npz"), "w").close()
    with pytest.raises(FileNotFoundError, match=r"of 1 case\(s\), e.g. .*1\.2\.840\.7"):
        trainer.check_previous_stage_predictions()
    open(os.path.join(folder, "1.2.840.7.b2nd"), "w").close()  # identifiers may hold dots (DICOM UIDs)
    trainer.check_previous_stage_predictions()


def _write_label_map(folder, name, shape, empty=False):
    os.makedirs(folder, exist_ok=True)
    labels = np.zeros(shape, np.uint8)
    if not empty:
        labels[4:10, 4:12, 5:12] = 1
        labels[6:8, 6:9, 7:10] = 2
    sitk.WriteImage(sitk.GetImageFromArray(labels), os.path.join(folder, f"{name}.nii.gz"))


def test_the_cascade_stage_predicts_from_previous_stage_segmentations(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle, dim=3, plans=cascade_plans(),
                                configuration="3d_cascade_fullres")
    shape = (14, 18, 16)
    write_raw_case(tmp_path / "in", "case", shape)
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False, steps=2)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    with pytest.raises(DiffusionPredictorError, match="cascade stage.*-prev_stage_predictions"):
        predictor.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(DiffusionPredictorError, match=r"previous-stage segmentation .*prev[/\\]case.nii.gz"):
        predictor.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"),
                                                folder_with_segs_from_prev_stage=str(tmp_path / "prev"))
    assert not (tmp_path / "out").exists()
    probabilities = {}
    for name, empty in (("prev", False), ("prev_empty", True)):  # same image, another previous-stage segmentation
        _write_label_map(tmp_path / name, "case", shape, empty)
        out = tmp_path / f"out_{name}"
        predictor.predict_from_files_sequential(str(tmp_path / "in"), str(out), save_probabilities=True,
                                                folder_with_segs_from_prev_stage=str(tmp_path / name))
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz"))).shape == shape
        probabilities[name] = np.load(out / "case.npz")["probabilities"]
    assert np.abs(probabilities["prev"] - probabilities["prev_empty"]).max() > 1e-3  # the network reads it


def test_a_cascade_stage_is_refused_for_an_ensemble(nnunet_env):
    """Its cases carry the previous-stage channels, which the stock model of the same spacing cannot take."""
    results = nnunet_env["nnUNet_results"]
    folder = write_model_folder(results, nnUNetTrainerDiffRecycle, dim=3, plans=cascade_plans(),
                                configuration="3d_cascade_fullres")
    stock = write_model_folder(results / "stock", nnUNetTrainer, dim=3, plans=cascade_plans(),
                               configuration="3d_fullres")
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, steps=2)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    with pytest.raises(DiffusionPredictorError, match=f"{folder}.* is a cascade stage"):
        predictor.initialize_ensemble_model(stock, (0,))


def test_a_case_with_more_channels_than_the_network_takes_is_refused(nnunet_env):
    """Surplus channels (a previous stage's, stacked by nnU-Net's preprocessing) would be read as the noisy mask."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle)
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, steps=2)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    with pytest.raises(DiffusionPredictorError, match="has 3 channels, the network takes 1 image channels"):
        predictor.predict_case(torch.zeros(3, 1, 36, 36))


def test_a_residual_encoder_3d_model_predicts(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_blockFiLM, dim=3,
                                residual=True)
    write_raw_case(tmp_path / "in", "case", (20, 18, 22))
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=True, steps=2)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    predictor.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    assert written.shape == (20, 18, 22) and set(np.unique(written)) <= {0, 1, 2}
