"""``nnUNetv2_predict_diffusion``: stock flags, a 3D multi-class round trip through the command, and bad input."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.inference.predict_entry_point import build_parser, predict_diffusion_entry_point
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters

TRAINER = nnUNetTrainerDiffRecycle_10iters.__name__
STOCK_FLAGS = ["-i", "-o", "-d", "-p", "-tr", "-c", "-f", "-step_size", "--disable_tta", "--verbose",
               "--save_probabilities", "--continue_prediction", "-chk", "-npp", "-nps", "-prev_stage_predictions",
               "-num_parts", "-part_id", "-device", "--disable_progress_bar", "--not_on_device"]


def _command() -> str:
    return os.path.join(os.path.dirname(sys.executable), "nnUNetv2_predict_diffusion")


def test_every_stock_flag_plus_the_diffusion_flags():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert set(STOCK_FLAGS) <= flags
    assert {"--sampler", "--steps", "--eta", "--seed", "--save_steps", "--num_samples", "--ensemble_with",
            "--ensemble_weight"} <= flags
    assert argparse.ArgumentParser.parse_args.__module__ == "argparse"  # restored after capturing the parser
    args = parser.parse_args(["-i", "a", "-o", "b", "-d", "1", "-c", "2d"])
    assert args.tr == "nnUNetTrainerDiffRecycle" and args.f == (0, 1, 2, 3, 4) and args.step_size == 0.5


def test_3d_multiclass_case_round_trips_through_the_command(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, dim=3,
                                num_classes=4)
    image_file = write_raw_case(tmp_path / "in", "case", (20, 18, 23), spacing=(0.9, 1.1, 1.3),
                                origin=(12.5, -3.0, 7.25))
    out = tmp_path / "out"
    command = [_command(), "-i", str(tmp_path / "in"), "-o", str(out), "-d", "999", "-c", "3d_fullres", "-tr",
               TRAINER, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "1", "--steps", "2", "--num_samples", "2",
               "--save_probabilities", "--disable_progress_bar", "--disable_tta"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]

    reference = sitk.ReadImage(image_file)
    for path in (out / "case.nii.gz", out / "uncertainty" / "case_entropy.nii.gz"):
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == reference.GetSize()
        assert np.allclose(written.GetSpacing(), reference.GetSpacing())
        assert np.allclose(written.GetOrigin(), reference.GetOrigin())
        assert np.allclose(written.GetDirection(), reference.GetDirection())
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz")))
    assert set(np.unique(segmentation)) <= {0, 1, 2, 3}
    probabilities = np.load(out / "case.npz")["probabilities"]
    assert probabilities.shape == (4, 20, 18, 23)
    assert json.loads((out / "diffusion_settings.json").read_text())["num_samples"] == 2

    # the command gives what the predictor gives in this process
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, steps=2, num_samples=2,
                                         use_mirroring=False)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    predictor.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "in_process"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "in_process" / "case.nii.gz"))),
                          segmentation)


def _refusal(argv) -> str:
    """Runs the command in this process; returns its one-line error message (it must refuse)."""
    with pytest.raises(SystemExit) as refused:
        predict_diffusion_entry_point(argv)
    message = refused.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


@pytest.fixture
def models(nnunet_env, tmp_path):
    results = nnunet_env["nnUNet_results"]
    write_raw_case(tmp_path / "in", "case", (36, 36))
    return {
        "diffusion": write_model_folder(results, nnUNetTrainerDiffRecycle_10iters),
        "stock": write_model_folder(results, nnUNetTrainer),
        "base": ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "999", "-c", "2d", "-f", "0",
                 "-device", "cpu", "-npp", "0", "-nps", "0", "-tr", TRAINER],
        "out": tmp_path / "out",
    }


@pytest.mark.parametrize("extra,expected", [
    (["--steps", "0"], "steps must be a positive integer"),
    (["--steps", "6"], "exceeds the 5 timesteps"),
    (["--eta", "-0.1", "--sampler", "ddim"], "eta must be in [0, 1]"),
    (["--eta", "0.5", "--sampler", "ddpm"], "eta applies to the ddim sampler only"),
    (["--eta", "0.5"], "eta applies to the ddim sampler only"),  # the model's stored sampler is ddpm
    (["--num_samples", "0"], "num_samples must be an integer >= 1"),
    (["--ensemble_weight", "1.5"], "ensemble_weight must be in [0, 1]"),
    (["-f", "0", "1"], "fold_1"),
])
def test_bad_options_are_refused_before_any_case(models, extra, expected):
    message = _refusal(models["base"] + extra)
    assert expected in message
    assert not models["out"].exists()


def test_a_stock_model_folder_is_not_a_diffusion_model(models):
    message = _refusal(models["base"] + ["-tr", "nnUNetTrainer"])
    assert "is not a diffusion model" in message and models["stock"] in message
    assert not models["out"].exists()


def test_a_checkpoint_without_diffusion_settings_is_refused(models):
    path = os.path.join(models["diffusion"], "fold_0", "checkpoint_final.pth")
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["network_weights"]["_extra_state"]
    torch.save(checkpoint, path)
    message = _refusal(models["base"])
    assert "has no diffusion settings" in message and path in message


def test_an_ensemble_model_with_other_labels_or_preprocessing_is_refused(models, nnunet_env):
    other_labels = write_model_folder(nnunet_env["nnUNet_results"] / "other", nnUNetTrainer, num_classes=2)
    message = _refusal(models["base"] + ["--ensemble_with", other_labels])
    assert "has other labels" in message and other_labels in message

    plans_file = os.path.join(models["stock"], "plans.json")
    plans = json.loads(open(plans_file).read())
    plans["configurations"]["2d"]["spacing"] = [0.5, 0.5]
    with open(plans_file, "w") as f:
        json.dump(plans, f)
    message = _refusal(models["base"] + ["--ensemble_with", models["stock"]])
    assert "preprocesses differently" in message and "spacing" in message

    plans["configurations"]["2d"]["spacing"] = [1.0, 1.0]
    plans["dataset_name"] = "Dataset001_Other"
    with open(plans_file, "w") as f:
        json.dump(plans, f)
    message = _refusal(models["base"] + ["--ensemble_with", models["stock"]])
    assert "was trained on Dataset001_Other" in message
    assert not models["out"].exists()


def test_the_command_exits_with_one_line_and_no_traceback(models):
    completed = subprocess.run([_command(), *models["base"], "--steps", "0"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("nnUNetv2_predict_diffusion: error: steps must")
