"""Stock nnU-Net command lines on a subset of the real HC18 data: convert, plan, preprocess, train the recycling
trainer for a few iterations, predict with stock nnUNetv2_predict; outputs exist with the right shape and labels."""

import glob
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, nnunet_cli_env, run_cli
from PIL import Image

HC18 = os.path.join(REPO, "data", "hc18_fetal_head_us")
SUBJECTS = [f"{i:03d}" for i in range(0, 30, 2)]  # 15 subjects -> 3 held out for testing by the converter


def _subset(target: str) -> str:
    """Copies the chosen subjects' images and outlines (the shipped data is never touched)."""
    for sub in ("image", "annotation"):
        os.makedirs(os.path.join(target, sub))
        for path in glob.glob(os.path.join(HC18, sub, "*.png")):
            if os.path.basename(path)[:3] in SUBJECTS:
                shutil.copy(path, os.path.join(target, sub))
    return target


@pytest.mark.integration
def test_hc18_subset_trains_and_predicts_through_stock_cli(tmp_path):
    env = nnunet_cli_env(str(tmp_path / "nnunet"), nnUNet_n_proc_DA="0")
    source = _subset(str(tmp_path / "hc18_subset"))
    run_cli(["python", "-m", "nnunetv2_diffusion.dataset_conversion.Dataset520_HC18", "-i", source, "-d", "520"], env)
    raw = os.path.join(env["nnUNet_raw"], "Dataset520_HC18")
    test_images = sorted(glob.glob(os.path.join(raw, "imagesTs", "*.png")))
    assert len(test_images) >= 3

    # planning crashes in nnU-Net 2.8.1 with nnUNet_n_proc_DA=0, so it gets a positive value
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "520", "-c", "2d", "-np", "2", "--verify_dataset_integrity"],
            {**env, "nnUNet_n_proc_DA": "2"})
    trainer = "nnUNetTrainerDiffRecycle_10iters"
    run_cli(["nnUNetv2_train", "520", "2d", "0", "-tr", trainer, "-device", "cpu"], env)
    model = os.path.join(env["nnUNet_results"], "Dataset520_HC18", f"{trainer}__nnUNetPlans__2d")
    for produced in ("fold_0/checkpoint_final.pth", "fold_0/progress.png", "fold_0/validation/summary.json"):
        assert os.path.isfile(os.path.join(model, produced)), produced

    out = str(tmp_path / "predicted")
    run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", "520", "-c", "2d", "-f", "0",
             "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    for image_path in test_images:
        case = os.path.basename(image_path).replace("_0000.png", ".png")
        predicted = np.asarray(Image.open(os.path.join(out, case)))
        assert predicted.shape == np.asarray(Image.open(image_path)).shape
        assert set(np.unique(predicted)) <= {0, 1}
