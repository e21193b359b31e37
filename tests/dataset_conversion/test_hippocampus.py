"""Dataset527_Hippocampus on a small fixture in the MSD Task04 layout."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError
from nnunetv2_diffusion.dataset_conversion.Dataset527_Hippocampus import convert_hippocampus

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007",
         "hippocampus_010"]


def write_volume(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -3.0, 2.0))
    sitk.WriteImage(image, str(path))


def make_source(root, float_label="hippocampus_003"):
    rng = np.random.default_rng(1)
    for d in ("imagesTr", "labelsTr"):
        os.makedirs(root / d)
    for i, case in enumerate(CASES):
        image = rng.random((5, 6, 4)).astype(np.float32) * 1000 if i % 2 else rng.integers(0, 255, (5, 6, 4),
                                                                                            dtype=np.uint8)
        label = np.zeros((5, 6, 4), np.uint8)
        label[1:3, 1:3, 1:3] = 1
        label[3:5, 2:4, 1:3] = 2
        write_volume(root / "imagesTr" / f"{case}.nii.gz", image)
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label.astype(np.float32) if case == float_label else label)
    (root / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    return root


def test_conversion(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = convert_hippocampus(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before

    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == ["hippocampus_010_0000.nii.gz"]
    assert sorted(os.listdir(os.path.join(folder, "labelsTs"))) == ["hippocampus_010.nii.gz"]
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["numTraining"] == 5
    splits = json.load(open(tmp_path / "pre" / "Dataset527_Hippocampus" / "splits_final.json"))
    assert splits == [{"train": CASES[:4], "val": ["hippocampus_007"]}]

    label = sitk.ReadImage(os.path.join(folder, "labelsTr", "hippocampus_003.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8 and label.GetOrigin() == (10.0, -3.0, 2.0)
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}
    # images are copied byte for byte (intensity scales are left to nnU-Net's per-case z-scoring)
    assert open(os.path.join(folder, "imagesTr", "hippocampus_004_0000.nii.gz"), "rb").read() == \
        open(source / "imagesTr" / "hippocampus_004.nii.gz", "rb").read()
    report = json.load(open(os.path.join(folder, "conversion_report.json")))
    assert report["label_cast"] == ["hippocampus_003"] and report["label_geometry_copied"] == []


@pytest.mark.parametrize("problem", ["label_value", "non_integer", "spacing", "shape", "missing_label",
                                     "truncated_label"])
def test_bad_case(tmp_path, problem):
    source = make_source(tmp_path / "source")
    path = source / "labelsTr" / "hippocampus_006.nii.gz"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if problem == "label_value":
        label[0, 0, 0] = 3
        write_volume(path, label)
    elif problem == "non_integer":
        write_volume(path, label.astype(np.float32) + 0.25)
    elif problem == "spacing":
        write_volume(path, label, spacing=(1.0, 1.0, 1.5))
    elif problem == "shape":
        write_volume(path, label[:-1])
    elif problem == "truncated_label":  # SimpleITK alone would read it, zero-filled
        data = open(path, "rb").read()
        path.write_bytes(data[:len(data) // 2])
    else:
        os.remove(path)
    before = snapshot(source)
    with pytest.raises(DatasetConversionError, match="hippocampus_006"):
        convert_hippocampus(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert snapshot(source) == before
    assert os.listdir(tmp_path / "raw") == []
    assert not os.path.exists(tmp_path / "pre" / "Dataset527_Hippocampus")


def test_refuses_existing(tmp_path):
    source = make_source(tmp_path / "source")
    kwargs = dict(raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    convert_hippocampus(str(source), **kwargs)
    with pytest.raises(FileExistsError):
        convert_hippocampus(str(source), **kwargs)
    convert_hippocampus(str(source), overwrite=True, **kwargs)


@pytest.mark.parametrize("problem,message", [("nan", "holds 1 NaN or infinite values"),
                                             ("inf", "holds 2 NaN or infinite values"),
                                             ("constant", "is constant (every voxel is 12.5)")],
                         ids=["nan", "inf", "constant"])
def test_nan_or_constant_image_is_refused(tmp_path, problem, message):
    source = make_source(tmp_path / "source")
    path = source / "imagesTr" / "hippocampus_007.nii.gz"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    if problem == "nan":
        image[1, 2, 3] = np.nan
    elif problem == "inf":
        image[0, 0, :2] = [np.inf, -np.inf]
    else:
        image[:] = 12.5
    write_volume(path, image)
    before = snapshot(source)
    with pytest.raises(DatasetConversionError) as refused:
        convert_hippocampus(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert refused.value.case == "hippocampus_007"
    assert f"channel 0 ({path}) {message}" in str(refused.value)
    assert snapshot(source) == before
    assert os.listdir(tmp_path / "raw") == []


def test_empty_label_is_kept_and_counted(tmp_path, capsys):
    source = make_source(tmp_path / "source")
    for case in ("hippocampus_004", "hippocampus_010"):  # a training and a test case
        path = source / "labelsTr" / f"{case}.nii.gz"
        write_volume(path, np.zeros_like(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))))
    folder = convert_hippocampus(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    report = json.load(open(os.path.join(folder, "conversion_report.json")))
    assert report["empty_label"] == ["hippocampus_004", "hippocampus_010"]
    assert "empty labels kept: 2" in capsys.readouterr().out
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", "hippocampus_004.nii.gz")))
    assert not label.any()
