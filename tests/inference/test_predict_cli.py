"""``nnUNetv2_predict_diffusion``: stock flags, a 3D multi-class round trip through the command, and bad input."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.inference import predict_entry_point
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
    (["-step_size", "0"], "tile_step_size (-step_size) must be in (0, 1] (got 0.0)"),
    (["-step_size", "1.5"], "tile_step_size (-step_size) must be in (0, 1] (got 1.5)"),
    (["-num_parts", "2", "-part_id", "2"], "-part_id must be in [0, -num_parts) (got 2 of 2)"),
    (["-prev_stage_predictions", "{in}"], "the model's configuration is not a cascade stage"),
    pytest.param(["-device", "cuda"], "finds no CUDA GPU: use -device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="refused only without a GPU")),
])
def test_bad_options_are_refused_before_any_case(models, extra, expected):
    extra = [arg.replace("{in}", models["base"][1]) for arg in extra]
    message = _refusal(models["base"] + extra)
    assert expected in message
    assert not models["out"].exists()


def test_every_option_reaches_the_predictor(models, monkeypatch, tmp_path):
    """What the command hands the predictor, option by option (each value differs from its default)."""
    calls = {}

    class RecordingPredictor:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def initialize_from_trained_model_folder(self, folder, folds, checkpoint_name):
            calls["model"] = (folder, folds, checkpoint_name)

        def initialize_ensemble_model(self, folder, folds, checkpoint_name):
            calls["ensemble"] = (folder, folds, checkpoint_name)

        def predict_from_files(self, *args, **kwargs):
            calls["predict"] = (args, kwargs)

    monkeypatch.setattr(predict_entry_point, "nnUNetDiffusionPredictor", RecordingPredictor)
    predict_diffusion_entry_point(models["base"] + [  # the later -npp/-nps replace the base's
        "-step_size", "0.25", "--disable_tta", "--verbose", "--disable_progress_bar", "--not_on_device",
        "--sampler", "ddim", "--steps", "3", "--eta", "0.5", "--seed", "7", "--num_samples", "4",
        "--sample_batch", "2", "--save_steps", "--save_samples", "--ensemble_weight", "0.3",
        "--ensemble_with", models["stock"], "-chk", "checkpoint_best.pth", "--save_probabilities",
        "--continue_prediction", "-npp", "2", "-nps", "3", "-prev_stage_predictions", str(tmp_path),
        "-num_parts", "3", "-part_id", "1"])
    init = calls["init"]
    assert init["tile_step_size"] == 0.25 and init["use_mirroring"] is False and init["verbose"] is True
    assert init["allow_tqdm"] is False and init["perform_everything_on_device"] is False
    assert (init["sampler"], init["steps"], init["eta"], init["seed"]) == ("ddim", 3, 0.5, 7)
    assert (init["num_samples"], init["sample_batch"], init["ensemble_weight"]) == (4, 2, 0.3)
    assert init["save_steps"] is True and init["save_samples"] is True
    assert calls["model"] == (models["diffusion"], [0], "checkpoint_best.pth")
    assert calls["ensemble"] == (models["stock"], [0], "checkpoint_best.pth")
    args, kwargs = calls["predict"]
    assert args == (models["base"][1], str(models["out"]))
    assert kwargs == {"save_probabilities": True, "overwrite": False, "num_processes_preprocessing": 2,
                      "num_processes_segmentation_export": 3, "folder_with_segs_from_prev_stage": str(tmp_path),
                      "num_parts": 3, "part_id": 1}


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
    assert not models["out"].exists()


def test_a_truncated_checkpoint_is_refused(models):
    path = os.path.join(models["diffusion"], "fold_0", "checkpoint_final.pth")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    message = _refusal(models["base"])
    assert f"checkpoint {path} cannot be loaded safely: it is truncated, corrupted" in message
    assert not models["out"].exists()


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


# ---------------------------------------------------------------------------------------------- model and input
@pytest.mark.parametrize("extra,expected", [
    pytest.param(["-tr", "nnUNetTrainerDoesNotExist"],
                 ["no trainer class named nnUNetTrainerDoesNotExist (-tr) is installed",
                  "nnUNetTrainerDoesNotExist__nnUNetPlans__2d does not exist"], id="unknown_trainer"),
    pytest.param(["-p", "nnUNetPlansOther"], ["nnUNetTrainerDiffRecycle_10iters__nnUNetPlansOther__2d does not exist"],
                 id="unknown_plans"),
    pytest.param(["-c", "3d_lowres"], ["the nnUNetPlans plans have no configuration 3d_lowres (-c); they have: 2d"],
                 id="unknown_configuration"),
    pytest.param(["-d", "998"], ["Could not find a dataset with the ID 998"], id="unknown_dataset"),
])
def test_a_model_that_is_not_there_is_named_with_what_is_wrong(models, extra, expected):
    message = _refusal(models["base"] + extra)
    assert all(e in message for e in expected), message
    if extra[0] != "-d":
        assert ("models trained for this dataset: nnUNetTrainerDiffRecycle_10iters__nnUNetPlans__2d, "
                "nnUNetTrainer__nnUNetPlans__2d") in message
    assert not models["out"].exists()


def test_a_plans_file_without_the_configuration_asked_for_is_refused(models):
    lowres = models["diffusion"].replace("__2d", "__3d_lowres")  # a 2d model filed as 3d_lowres
    shutil.copytree(models["diffusion"], lowres)
    message = _refusal(models["base"] + ["-c", "3d_lowres"])
    assert f"plans file {lowres}/plans.json has no configuration 3d_lowres (-c); it has: 2d" in message
    assert not models["out"].exists()

    plans_file = os.path.join(models["diffusion"], "plans.json")  # plans without the checkpoint's configuration
    plans = json.loads(open(plans_file).read())
    plans["configurations"]["2d_other"] = plans["configurations"].pop("2d")
    with open(plans_file, "w") as f:
        json.dump(plans, f)
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(ValueError, match=r"plans.json has no configuration '2d', the one .*fold_0/checkpoint_final"):
        predictor.initialize_from_trained_model_folder(models["diffusion"], (0,))


def test_a_missing_or_unsafe_ensemble_model_is_refused(models, tmp_path):
    message = _refusal(models["base"] + ["--ensemble_with", str(tmp_path / "nowhere")])
    assert f"model folder {tmp_path / 'nowhere'} does not exist" in message

    path = os.path.join(models["stock"], "fold_0", "checkpoint_final.pth")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["payload"] = _RunsCodeWhenUnpickled()
    torch.save(checkpoint, path)
    message = _refusal(models["base"] + ["--ensemble_with", models["stock"]])
    assert f"checkpoint {path} cannot be loaded safely" in message
    assert not models["out"].exists()


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def _write_file(path, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


@pytest.mark.parametrize("problem", ["missing", "no_nifti", "misnamed", "channels", "corrupt", "truncated", "nan"])
def test_bad_input_folder_is_refused_before_anything_is_written(models, tmp_path, problem):
    folder = tmp_path / "bad_in"
    write_raw_case(folder, "a_good_case", (36, 36))  # sorted first: would be predicted before the bad one
    expected = {
        "missing": f"input folder {tmp_path / 'nowhere'} does not exist",
        "no_nifti": f"input folder {folder} holds no .nii.gz files",
        "misnamed": f"input file {folder / 'case.nii.gz'} is not named <case>_XXXX.nii.gz",
        "channels": f"case case in {folder} has channel files _0000, _0001; the model takes 1 channel(s)",
        "corrupt": f"input image {folder / 'case_0000.nii.gz'}: its NIfTI header cannot be read",
        "truncated": f"input image {folder / 'case_0000.nii.gz'}: its gzip stream is cut off",
        "nan": f"input image {folder / 'case_0000.nii.gz'}: it holds 1 NaN or infinite values",
    }[problem]
    if problem == "no_nifti":
        for name in os.listdir(folder):
            os.remove(folder / name)
        _write_file(folder / "case_0000.png", b"\x89PNG")
    elif problem == "misnamed":
        write_raw_case(folder, "case", (36, 36))
        os.rename(folder / "case_0000.nii.gz", folder / "case.nii.gz")
    elif problem == "channels":  # the model takes one channel
        shutil.copyfile(write_raw_case(folder, "case", (36, 36)), folder / "case_0001.nii.gz")
    elif problem == "corrupt":
        _write_file(folder / "case_0000.nii.gz", b"not an image at all")
    elif problem == "truncated":
        data = open(write_raw_case(folder, "case", (36, 36)), "rb").read()
        _write_file(folder / "case_0000.nii.gz", data[:len(data) // 2])
    elif problem == "nan":  # SimpleITK, nnU-Net's NIfTI reader, would read the NaN as 0
        array = np.random.default_rng(0).normal(size=(1, 36, 36)).astype(np.float32)
        array[0, 3, 4] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "case_0000.nii.gz"))
    source = tmp_path / "nowhere" if problem == "missing" else folder
    message = _refusal(models["base"] + ["-i", str(source)])
    assert expected in message, message
    assert not models["out"].exists()


@pytest.mark.parametrize("problem", ["nan", "corrupt"])
def test_nan_or_a_corrupt_image_in_another_format_is_refused(models, tmp_path, problem):
    """.mha: no separate file check (as for NIfTI); NaN comes through nnU-Net's reader and a damaged file makes
    the reader fail."""
    dataset_file = os.path.join(models["diffusion"], "dataset.json")
    dataset = json.loads(open(dataset_file).read())
    dataset["file_ending"] = ".mha"
    with open(dataset_file, "w") as f:
        json.dump(dataset, f)
    array = np.random.default_rng(0).normal(size=(1, 36, 36)).astype(np.float32)
    array[0, 3, 4] = np.nan
    path = tmp_path / "mha_in" / "case_0000.mha"
    os.makedirs(path.parent)
    if problem == "nan":
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    else:
        path.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    message = _refusal(models["base"] + ["-i", str(path.parent)])
    assert f"input image {path} " + ("holds 1 NaN or infinite values" if problem == "nan" else
                                     "cannot be read by SimpleITKIO: ") in message
    assert not models["out"].exists()
