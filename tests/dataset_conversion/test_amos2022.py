"""Dataset522_AMOS2022 on a small fixture in the AMOS 2022 release layout."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion import Dataset522_AMOS2022 as amos
from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError

TRAIN = ["amos_0001", "amos_0004", "amos_0005", "amos_0540"]  # the last is MR
VAL = ["amos_0012", "amos_0010", "amos_0013", "amos_0590"]  # dataset.json order, not sorted


def make_source(root, with_json=True):
    rng = np.random.default_rng(3)
    for d in ("imagesTr", "labelsTr", "imagesVa", "labelsVa", "imagesTs"):
        os.makedirs(root / d)
    for cases, split in ((TRAIN, "Tr"), (VAL, "Va")):
        for case in cases:
            image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (4, 5, 6)).astype(np.int16))
            image.SetSpacing((0.8, 0.8, 5.0))
            label = sitk.GetImageFromArray(rng.integers(0, 16, (4, 5, 6)).astype(np.uint8))
            label.CopyInformation(image)
            sitk.WriteImage(image, str(root / f"images{split}" / f"{case}.nii.gz"))
            sitk.WriteImage(label, str(root / f"labels{split}" / f"{case}.nii.gz"))
    names = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
             "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
             "prostate/uterus"]
    if with_json:
        meta = {"name": "AMOS", "labels": {str(i): n for i, n in enumerate(names)},
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in TRAIN],
                "validation": [{"image": f"./imagesVa/{c}.nii.gz", "label": f"./labelsVa/{c}.nii.gz"} for c in VAL],
                "test": []}
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_conversion(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = amos.convert_amos2022(str(source), raw_root=str(tmp_path / "raw"),
                                   preprocessed_root=str(tmp_path / "pre"))
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before
    assert sorted(os.listdir(os.path.join(folder, "labelsTr"))) == [f"{c}.nii.gz" for c in TRAIN[:3]]
    assert sorted(os.listdir(os.path.join(folder, "labelsTs"))) == [f"{c}.nii.gz" for c in sorted(VAL[:3])]
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["channel_names"] == {"0": "CT"} and len(dataset["labels"]) == 16
    assert dataset["labels"]["arota"] == 8 and dataset["numTraining"] == 3
    assert not os.path.exists(tmp_path / "pre" / "Dataset522_AMOS2022")  # nnU-Net's own 5 folds apply
    report = json.load(open(os.path.join(folder, "conversion_report.json")))
    assert report["num_cases"] == {"imagesTr": 3, "imagesTs": 3, "mr_cases_skipped": 2}


def test_paper_validation_without_dataset_json(tmp_path):
    source = make_source(tmp_path / "source", with_json=False)
    folder = amos.convert_amos2022(str(source), paper_validation=True, raw_root=str(tmp_path / "raw"),
                                   preprocessed_root=str(tmp_path / "pre"))
    splits = json.load(open(tmp_path / "pre" / "Dataset522_AMOS2022" / "splits_final.json"))
    # without dataset.json the validation cases are taken sorted: amos_0010 comes first
    assert splits == [{"train": TRAIN[:3], "val": ["amos_0010"]}]
    assert sorted(os.listdir(os.path.join(folder, "labelsTs"))) == ["amos_0012.nii.gz", "amos_0013.nii.gz"]
    assert "amos_0010_0000.nii.gz" in os.listdir(os.path.join(folder, "imagesTr"))


def test_label_outside_documented_set(tmp_path):
    source = make_source(tmp_path / "source")
    label = sitk.ReadImage(str(source / "labelsVa" / "amos_0013.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 16
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(source / "labelsVa" / "amos_0013.nii.gz"))
    with pytest.raises(DatasetConversionError, match=r"amos_0013.*\[16\]"):
        amos.convert_amos2022(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot be read as JSON"),
    (json.dumps({"name": "AMOS", "training": []}), "has no 'labels'"),
])
def test_a_broken_source_dataset_json_is_named_in_one_line(tmp_path, capsys, content, message, nnunet_env):
    source = make_source(tmp_path / "source")
    (source / "dataset.json").write_text(content)
    with pytest.raises(SystemExit) as stopped:
        amos.main(["-i", str(source)])
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and error.count("\n") == 1 and "Traceback" not in error
    assert f"{source / 'dataset.json'}: {message}" in error
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []


def test_an_out_of_range_id_or_unset_nnunet_raw_is_one_line(tmp_path, capsys, monkeypatch):
    source = make_source(tmp_path / "source")
    with pytest.raises(SystemExit):
        amos.main(["-i", str(source), "-d", "1000"])
    assert capsys.readouterr().err.endswith("error: nnU-Net dataset ids are 1..999, got 1000\n")
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit):
        amos.main(["-i", str(source)])
    assert capsys.readouterr().err.endswith("error: nnUNet_raw is not set: export nnUNet_raw=<folder>\n")


def test_a_split_left_by_an_earlier_conversion_is_kept_and_named(tmp_path, capsys):
    source = make_source(tmp_path / "source")
    roots = {"raw_root": str(tmp_path / "raw"), "preprocessed_root": str(tmp_path / "pre")}
    amos.convert_amos2022(str(source), paper_validation=True, **roots)
    splits = tmp_path / "pre" / "Dataset522_AMOS2022" / "splits_final.json"
    written = splits.read_text()
    capsys.readouterr()
    amos.convert_amos2022(str(source), overwrite=True, **roots)  # no split this time
    assert splits.read_text() == written  # the user's file stays
    assert f"warning: {splits} exists and this conversion writes no split" in capsys.readouterr().err
