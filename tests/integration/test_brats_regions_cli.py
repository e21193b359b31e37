"""Region-based labels through the stock command lines: a small synthetic dataset in the BraTS 2021 layout, converted
by our Dataset525 script (regions whole tumour / tumour core / enhancing tumour), planned, trained with the recycling
trainer and a stock trainer, predicted with both predictors and ensembled."""

import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import nnunet_cli_env, run_cli

from nnunetv2_diffusion.dataset_conversion import Dataset525_BraTS2021 as brats
from nnunetv2_diffusion.inference.ensemble_choice import read_ensemble_choice

CASES = [f"BraTS2021_{i:05d}" for i in range(12)]
SHAPE = (6, 48, 48)


def _write_source(root: str) -> None:
    """Nested tumours (edema 2 around necrosis 1 around enhancing 4, BraTS's ids) that every modality shows."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    for index, case in enumerate(CASES):
        centre = (3, 16 + index % 4 * 4, 18 + index % 3 * 5)
        distance = np.sqrt((yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 + (2 * (zz - centre[0])) ** 2)
        seg = np.zeros(SHAPE, np.uint8)
        seg[distance < 12] = 2
        seg[distance < 7] = 1
        seg[distance < 3.5] = 4
        os.makedirs(os.path.join(root, case))
        for offset, modality in enumerate(brats.MODALITIES):
            image = seg * (1.0 + 0.3 * offset) + rng.normal(0, 0.5, SHAPE)
            sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)),
                            os.path.join(root, case, f"{case}_{modality}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(seg), os.path.join(root, case, f"{case}_seg.nii.gz"))


@pytest.mark.integration
def test_region_dataset_trains_predicts_and_ensembles_through_the_command_lines(tmp_path):
    env = nnunet_cli_env(str(tmp_path / "nnunet"), nnUNet_n_proc_DA="0")
    _write_source(str(tmp_path / "source"))
    run_cli(["python", "-m", "nnunetv2_diffusion.dataset_conversion.Dataset525_BraTS2021", "-i",
             str(tmp_path / "source")], env)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "525", "-c", "2d", "-np", "2", "--verify_dataset_integrity"],
            {**env, "nnUNet_n_proc_DA": "2"})
    results = os.path.join(env["nnUNet_results"], "Dataset525_BraTS2021")
    for trainer in ("nnUNetTrainerDiffRecycle_10iters", "nnUNetTrainer_10iters"):
        run_cli(["nnUNetv2_train", "525", "2d", "0", "-tr", trainer, "-device", "cpu", "--npz"], env, timeout=1200)
        assert os.path.isfile(os.path.join(results, f"{trainer}__nnUNetPlans__2d", "fold_0", "validation",
                                           "summary.json"))
    diffusion = os.path.join(results, "nnUNetTrainerDiffRecycle_10iters__nnUNetPlans__2d")
    stock = os.path.join(results, "nnUNetTrainer_10iters__nnUNetPlans__2d")
    run_cli(["nnUNetv2_diffusion_choose_ensemble", "-m", diffusion, "--ensemble_with", stock, "-f", "0"], env)

    images = os.path.join(env["nnUNet_raw"], "Dataset525_BraTS2021", "imagesTs")
    common = ["-i", images, "-d", "525", "-c", "2d", "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1",
              "-nps", "1", "--save_probabilities"]
    outputs = {"global_step": str(tmp_path / "diffusion"), "per_tile": str(tmp_path / "stock_cli"),
               "ensemble": str(tmp_path / "ensemble")}
    run_cli(["nnUNetv2_predict_diffusion", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-o", outputs["global_step"],
             "--num_samples", "2", *common], env)
    run_cli(["nnUNetv2_predict", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-o", outputs["per_tile"], *common], env)
    run_cli(["nnUNetv2_predict_diffusion", "-tr", "nnUNetTrainerDiffRecycle_10iters", "-o", outputs["ensemble"],
             "--ensemble_with", stock, *common], env)
    cases = sorted(glob.glob(os.path.join(images, "*_0000.nii.gz")))
    assert cases
    for folder in outputs.values():
        for image in cases:
            name = os.path.basename(image).replace("_0000.nii.gz", "")
            segmentation = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f"{name}.nii.gz")))
            assert segmentation.shape == SHAPE and set(np.unique(segmentation)) <= {0, 1, 2, 3}
            probabilities = np.load(os.path.join(folder, f"{name}.npz"))["probabilities"]
            assert probabilities.shape == (3, *SHAPE)  # one channel per region, no background
    assert os.path.isfile(os.path.join(outputs["global_step"], "uncertainty", "uncertainty_per_case.csv"))
    # the ensemble ran at the weight nnUNetv2_diffusion_choose_ensemble recorded for this stock model
    choice = read_ensemble_choice(diffusion, stock)
    with open(os.path.join(outputs["ensemble"], "diffusion_settings.json")) as f:
        settings = json.load(f)
    assert settings["ensemble_weight_source"] == "validation"
    assert settings["ensemble_weight"] == choice["weight"]
