"""Dataset520_HC18 on a small fixture in the HC18 layout (outlines drawn with known ellipses)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.draw import ellipse, ellipse_perimeter
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion import Dataset520_HC18 as hc18
from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError

H, W = 96, 128
# subject -> number of images; subjects 008 and 009 (the last 19 %) are the test set, 007 the fold-0 validation
IMAGES_PER_SUBJECT = {0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 2, 8: 1, 9: 2}
GAP_SMALL, GAP_LARGE, AT_BORDER = "002_HC", "003_HC", "004_HC"


def _ellipse_of(case):
    if case == AT_BORDER:
        return 30, 20, 34, 26  # centre row, col, radius r, c: cut by the top and left borders
    return 48, 64, 34, 26


def _outline(case):
    r, c, rr, cr = _ellipse_of(case)
    out = np.zeros((H, W), np.uint8)
    pr, pc = ellipse_perimeter(r, c, rr, cr, shape=(H, W))
    out[pr, pc] = 255
    if case == GAP_SMALL:
        out[r - 1:r + 2, :c] = 0  # a 3-pixel gap in the left arc: bridged by a closing
    if case == GAP_LARGE:
        out[:, c + 10:] = np.where(np.arange(H)[:, None] < r, 0, out[:, c + 10:])  # top right arc missing
    return out


def _true_mask(case):
    r, c, rr, cr = _ellipse_of(case)
    mask = np.zeros((H, W), np.uint8)
    mask[ellipse(r, c, rr + 0.5, cr + 0.5, shape=(H, W))] = 1
    return mask


def make_source(root):
    rng = np.random.default_rng(0)
    os.makedirs(root / "image")
    os.makedirs(root / "annotation")
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for subject, n in IMAGES_PER_SUBJECT.items():
        for k in range(1, n + 1):
            case = f"{subject:03d}_{'' if k == 1 else k}HC"
            image = (rng.random((H, W)) * 60 + 100 * _true_mask(case)).astype(np.uint8)
            sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "image" / f"{case}.png"))
            sitk.WriteImage(sitk.GetImageFromArray(_outline(case)), str(root / "annotation" / f"{case}_Annotation.png"))
            rows.append(f"{case}.png,0.1,{0.1 * hc18.ellipse_perimeter(34, 26):.2f}")
    (root / "training_set_pixel_size_and_HC.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hc18")
    source = make_source(tmp / "source")
    before = snapshot(source)
    folder = hc18.convert_hc18(str(source), raw_root=str(tmp / "raw"), preprocessed_root=str(tmp / "pre"))
    return tmp, source, before, folder


def test_fill_outline_fixes():
    closed, fix, m = hc18.fill_outline(_outline("000_HC") > 0, "000_HC")
    assert fix == "filled" and m["components"] == 1 and m["iou_with_fitted_ellipse"] > 0.97
    assert np.array_equal(closed, ndimage.binary_fill_holes(_outline("000_HC") > 0))
    for case, expected in ((GAP_SMALL, "closed_then_filled"), (GAP_LARGE, "ellipse_fit"), (AT_BORDER, "ellipse_fit")):
        mask, fix, _ = hc18.fill_outline(_outline(case) > 0, case)
        truth = _true_mask(case).astype(bool)
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert fix == expected, case
        assert dice > 0.97, (case, dice)


def test_empty_annotation_is_refused():
    with pytest.raises(DatasetConversionError, match="case c8: annotation is empty"):
        hc18.fill_outline(np.zeros((H, W), bool), "c8")


def test_fill_outline_rejects_scribble():
    scribble = np.zeros((H, W), bool)
    scribble[10, 10:60] = True
    scribble[10:50, 80] = True
    with pytest.raises(DatasetConversionError, match="c9"):
        hc18.fill_outline(scribble, "c9")


def test_conversion(converted):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    tmp, source, before, folder = converted
    assert folder == str(tmp / "raw" / "Dataset520_HC18")
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before

    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["channel_names"] == {"0": "ultrasound"} and dataset["file_ending"] == ".png"
    assert dataset["labels"] == {"background": 0, "fetal head": 1} and dataset["numTraining"] == 10
    test_cases = sorted(f[:-len(".png")] for f in os.listdir(os.path.join(folder, "labelsTs")))
    assert test_cases == ["008_HC", "009_2HC", "009_HC"]
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == [f"{c}_0000.png" for c in test_cases]

    splits = json.load(open(tmp / "pre" / "Dataset520_HC18" / "splits_final.json"))
    assert splits == json.load(open(os.path.join(folder, "splits_final.json")))
    assert len(splits) == 1 and splits[0]["val"] == ["007_2HC", "007_HC"]
    assert len(splits[0]["train"]) == 8 and not set(splits[0]["train"]) & set(test_cases)

    image = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr", "003_HC_0000.png")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", "003_HC.png")))
    assert image.shape == label.shape == (24, 32) and image.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}

    report = json.load(open(os.path.join(folder, "conversion_report.json")))
    assert report["mask_fix_counts"] == {"filled": 10, "closed_then_filled": 1, "ellipse_fit": 2}
    assert report["cases_needing_a_fix"] == {GAP_SMALL: "closed_then_filled", GAP_LARGE: "ellipse_fit",
                                             AT_BORDER: "ellipse_fit"}
    assert report["outlines_touching_border"] == [AT_BORDER]
    assert report["num_images"] == {"imagesTr": 10, "imagesTs": 3}
    assert report["num_subjects"] == {"train": 8, "test": 2, "fold0_train": 7, "fold0_val": 1}
    assert report["head_circumference_check"]["median_relative_error"] < 0.02
    pixel_rows = open(os.path.join(folder, "pixel_size_and_hc.csv")).read().splitlines()
    assert pixel_rows[0].startswith("case,split,pixel_size_x_mm") and "000_HC,train,0.4,0.4" in pixel_rows[1]


def test_refuses_existing_unless_overwrite(converted, tmp_path):
    tmp, source, _, folder = converted
    with pytest.raises(FileExistsError):
        hc18.convert_hc18(str(source), raw_root=str(tmp / "raw"), preprocessed_root=str(tmp_path))
    marker = os.path.join(folder, "imagesTr", "stale_0000.png")
    open(marker, "w").close()
    hc18.convert_hc18(str(source), overwrite=True, downsample=2, raw_root=str(tmp / "raw"),
                      preprocessed_root=str(tmp / "pre"))
    assert not os.path.exists(marker)
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", "000_HC.png")))
    assert label.shape == (48, 64)


@pytest.mark.parametrize("problem", ["value", "shape", "missing", "corrupt"])
def test_bad_annotation(tmp_path, problem):
    source = tmp_path / "source"
    os.makedirs(source / "image")
    os.makedirs(source / "annotation")
    outline = _outline("000_HC")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((H, W), np.uint8)), str(source / "image" / "000_HC.png"))
    if problem == "value":
        outline[0, 0] = 128
    if problem == "shape":
        outline = outline[:-2]
    if problem == "corrupt":
        (source / "annotation" / "000_HC_Annotation.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    elif problem != "missing":
        sitk.WriteImage(sitk.GetImageFromArray(outline), str(source / "annotation" / "000_HC_Annotation.png"))
    before = snapshot(source)
    match = {"value": r"000_HC.*\[128\]", "shape": "000_HC.*shape", "missing": "000_HC.*missing",
             "corrupt": "case 000_HC: cannot read .*000_HC_Annotation.png"}[problem]
    with pytest.raises(DatasetConversionError, match=match):
        hc18.convert_hc18(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert snapshot(source) == before
    assert os.listdir(tmp_path / "raw") == []


def test_constant_image_is_refused_after_its_annotation_checks(tmp_path):
    source = tmp_path / "source"
    os.makedirs(source / "image")
    os.makedirs(source / "annotation")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((H, W), 40, np.uint8)), str(source / "image" / "000_HC.png"))
    sitk.WriteImage(sitk.GetImageFromArray(_outline("000_HC")), str(source / "annotation" / "000_HC_Annotation.png"))
    before = snapshot(source)
    with pytest.raises(DatasetConversionError, match=r"case 000_HC: image is constant \(every voxel is 40\)"):
        hc18.convert_hc18(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert snapshot(source) == before
    assert os.listdir(tmp_path / "raw") == []


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_command_line(converted, tmp_path):
    _, source, _, _ = converted
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    run = subprocess.run([sys.executable, "-m", "nnunetv2_diffusion.dataset_conversion.Dataset520_HC18",
                          "-i", str(source), "-d", "901", "--downsample", "8"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "ellipse_fit': 2" in run.stdout
    assert os.path.isfile(tmp_path / "raw" / "Dataset901_HC18" / "labelsTr" / "000_HC.png")
    assert os.path.isfile(tmp_path / "pre" / "Dataset901_HC18" / "splits_final.json")


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys, nnunet_env):
    source = tmp_path / "source"
    os.makedirs(source / "image")
    os.makedirs(source / "annotation")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((H, W), 40, np.uint8)), str(source / "image" / "000_HC.png"))
    sitk.WriteImage(sitk.GetImageFromArray(_outline("000_HC")), str(source / "annotation" / "000_HC_Annotation.png"))
    with pytest.raises(SystemExit) as stopped:
        hc18.main(["-i", str(source), "-d", "902"])
    assert stopped.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.endswith("error: case 000_HC: image is constant (every voxel is 40): zero variance, no intensity to "
                          "segment from\n")
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []


def test_a_pixel_size_that_is_not_a_number_is_named(tmp_path, capsys, nnunet_env):
    source = make_source(tmp_path / "source")
    table = source / "training_set_pixel_size_and_HC.csv"
    lines = table.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",n/a,44.3"
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        hc18.main(["-i", str(source), "-d", "902"])
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"{table}: pixel size and head circumference must be numbers" in error
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []
