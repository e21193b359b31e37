"""Dataset523_PelvicMR on a small fixture in the zenodo 7013610 layout (data/<key>_img.nii + institution.txt)."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion import Dataset523_PelvicMR as pelvic
from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError

INSTITUTIONS = {"UCL": [f"{i:03d}" for i in range(8)], "Rutgers": [f"{i:03d}" for i in range(8, 14)]}


def make_source(root):
    rng = np.random.default_rng(4)
    os.makedirs(root / "data")
    lines = []
    for institution, keys in INSTITUTIONS.items():
        for key in keys:
            image = sitk.GetImageFromArray(rng.random((3, 5, 5)).astype(np.float32))
            image.SetSpacing((0.75, 0.75, 2.5))
            label = sitk.GetImageFromArray(rng.integers(0, 9, (3, 5, 5)).astype(np.uint8))
            label.CopyInformation(image)
            sitk.WriteImage(image, str(root / "data" / f"{key}_img.nii"))
            sitk.WriteImage(label, str(root / "data" / f"{key}_mask.nii"))
            lines.append(f"{key} {institution}")
    (root / "institution.txt").write_text("\n".join(lines) + "\n")
    return root


def test_paper_split_formula():
    keys = [str(i) for i in range(100)]
    train, val, test = pelvic.paper_split(keys, "x")
    assert val == ["0", "1"] and train == keys[2:73] and test == keys[73:]
    train, val, test = pelvic.paper_split(keys[:4], "x")
    assert (train, val, test) == ([], ["0", "1"], ["2", "3"])


def test_conversion(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = pelvic.convert_pelvic_mr(str(source), raw_root=str(tmp_path / "raw"),
                                      preprocessed_root=str(tmp_path / "pre"))
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert len(dataset["labels"]) == 9 and dataset["labels"]["neurovascular bundles"] == 8
    assert dataset["numTraining"] == 6
    splits = json.load(open(tmp_path / "pre" / "Dataset523_PelvicMR" / "splits_final.json"))
    assert splits == [{"train": ["002", "003"], "val": ["000", "001", "008", "009"]}]
    assert sorted(f[:3] for f in os.listdir(os.path.join(folder, "labelsTs"))) == \
        ["004", "005", "006", "007", "010", "011", "012", "013"]
    image = sitk.ReadImage(os.path.join(folder, "imagesTr", "002_0000.nii.gz"))
    assert image.GetSpacing() == (0.75, 0.75, 2.5)


def test_missing_mask_and_bad_label(tmp_path):
    source = make_source(tmp_path / "source")
    os.remove(source / "data" / "011_mask.nii")
    with pytest.raises(DatasetConversionError, match="case 011: missing"):
        pelvic.convert_pelvic_mr(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    label = sitk.GetImageFromArray(np.full((3, 5, 5), 9, np.uint8))
    label.SetSpacing((0.75, 0.75, 2.5))
    sitk.WriteImage(label, str(source / "data" / "011_mask.nii"))
    with pytest.raises(DatasetConversionError, match=r"case 011: label values \[9\]"):
        pelvic.convert_pelvic_mr(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert os.listdir(tmp_path / "raw") == []
