"""The diffusion trainers' final validation predicts with the global-step diffusion predictor."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunet_fixtures import make_trainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as stock_trainer_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters
from nnunetv2_diffusion.training.diffusion_validation import VALIDATION_SEED, diffusion_predictor_in_validation


def _stock_validation_predicting(data: torch.Tensor, seen: dict):
    """Stands in for nnUNetTrainer.perform_actual_validation: builds its predictor exactly as 2.8.1 does (through
    the module-level name) and predicts one case."""

    def perform_actual_validation(self, save_probabilities=False):
        predictor = stock_trainer_module.nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=True,
            device=self.device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        seen["predictor"] = predictor
        seen["logits"] = predictor.predict_sliding_window_return_logits(data)
        if seen.get("fail"):
            raise RuntimeError("validation failed")

    return perform_actual_validation


def test_final_validation_samples_with_the_global_step_predictor(nnunet_env, monkeypatch):
    trainer = make_trainer(nnUNetTrainerDiffRecycle_10iters, deep_supervision=False)
    trainer.inference_allowed_mirroring_axes = (0, 1)
    data, seen = torch.randn(1, 1, 40, 40), {}
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", _stock_validation_predicting(data, seen))

    trainer.perform_actual_validation(False)

    assert type(seen["predictor"]) is nnUNetDiffusionPredictor
    assert stock_trainer_module.nnUNetPredictor is nnUNetPredictor
    ours = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, seed=VALIDATION_SEED)
    ours.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                               trainer.dataset_json, "x", (0, 1))
    assert torch.equal(seen["logits"], ours.predict_sliding_window_return_logits(data))
    assert torch.allclose(seen["logits"].exp().sum(0), torch.ones(1, 40, 40), atol=1e-5)  # log-probabilities


def test_the_stock_predictor_comes_back_even_when_validation_fails(nnunet_env, monkeypatch):
    trainer = make_trainer(nnUNetTrainerDiffRecycle_10iters, deep_supervision=False)
    seen = {"fail": True}
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation",
                        _stock_validation_predicting(torch.randn(1, 1, 32, 32), seen))
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer.perform_actual_validation(False)
    assert stock_trainer_module.nnUNetPredictor is nnUNetPredictor
    with diffusion_predictor_in_validation():
        assert stock_trainer_module.nnUNetPredictor is not nnUNetPredictor
    assert stock_trainer_module.nnUNetPredictor is nnUNetPredictor


@pytest.mark.integration
def test_nnunetv2_train_writes_the_dice_of_real_samples(nnunet_env, tmp_path):
    from synthetic_data import write_raw_dataset

    write_raw_dataset(str(nnunet_env["nnUNet_raw"]), 998, num_train=6, num_test=1, shape=(40, 40))
    binaries = os.path.dirname(sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*command, **extra_env):
        completed = subprocess.run([os.path.join(binaries, command[0]), *command[1:]], capture_output=True,
                                   text=True, env={**env, **extra_env}, timeout=600)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]

    # planning calls torch.set_num_threads(nnUNet_n_proc_DA), which must then be positive
    run("nnUNetv2_plan_and_preprocess", "-d", "998", "-c", "2d", "-np", "1", nnUNet_n_proc_DA="1")
    run("nnUNetv2_train", "998", "2d", "0", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-device", "cpu")
    model = os.path.join(nnunet_env["nnUNet_results"], "Dataset998_Synthetic",
                         "nnUNetTrainerDiffRecycle_10iters__nnUNetPlans__2d")
    with open(os.path.join(model, "fold_0", "validation", "summary.json")) as f:
        summary = json.load(f)
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    logs = [n for n in os.listdir(os.path.join(model, "fold_0")) if n.startswith("training_log")]
    with open(os.path.join(model, "fold_0", logs[0])) as f:
        assert "global-step diffusion sampling" in f.read()
    run("nnUNetv2_find_best_configuration", "998", "-c", "2d", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-f", "0")

    # the Dice is of the diffusion predictor's samples at the validation seed: predicting the validation cases from
    # their raw images with nnUNetv2_predict_diffusion at that seed gives the same segmentations again
    cases = [os.path.basename(c["prediction_file"])[:-len(".nii.gz")] for c in summary["metric_per_case"]]
    assert cases
    (tmp_path / "images").mkdir()
    for case in cases:
        shutil.copy(os.path.join(nnunet_env["nnUNet_raw"], "Dataset998_Synthetic", "imagesTr", f"{case}_0000.nii.gz"),
                    tmp_path / "images")
    run("nnUNetv2_predict_diffusion", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "again"), "-d", "998",
        "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-device", "cpu", "--seed",
        str(VALIDATION_SEED))
    for case in cases:
        validation, again = (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in (
            os.path.join(model, "fold_0", "validation", f"{case}.nii.gz"), tmp_path / "again" / f"{case}.nii.gz"))
        assert np.array_equal(validation, again), case
