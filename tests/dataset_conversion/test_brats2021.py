"""Dataset525_BraTS2021 (region-based and whole-tumour forms) on a small fixture in the BraTS 2021 layout."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion import Dataset525_BraTS2021 as brats
from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError

CASES = [f"BraTS2021_{i:05d}" for i in (0, 2, 3, 5, 8)]


def make_source(root):
    rng = np.random.default_rng(2)
    for case in CASES:
        os.makedirs(root / case)
        for m in brats.MODALITIES:
            sitk.WriteImage(sitk.GetImageFromArray(rng.random((3, 4, 5)).astype(np.float32)),
                            str(root / case / f"{case}_{m}.nii.gz"))
        seg = np.zeros((3, 4, 5), np.uint8)
        seg[0, :2, :2] = 2  # edema
        seg[1, 1:3, 1:3] = 1  # necrosis
        seg[2, 2:4, 2:4] = 4  # enhancing
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(root / case / f"{case}_seg.nii.gz"))
    (root / "README.txt").write_text("not a case")
    return root


def test_label_mappings_round_trip():
    seg = np.array([0, 1, 2, 4, 2, 1], np.uint8)
    regions = brats.brats_to_regions(seg)
    assert regions.tolist() == [0, 2, 1, 3, 1, 2]
    assert brats.convert_labels_back_to_brats(regions).tolist() == seg.tolist()
    assert brats.brats_to_whole_tumour(seg).tolist() == [0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError):
        brats.convert_labels_back_to_brats(np.array([0, 4]))


def test_paper_split_sizes():
    cases = [f"BraTS2021_{i:05d}" for i in range(1251)]
    train, val, test = brats.paper_split(cases[::-1])
    assert (len(train), len(val), len(test)) == (938, 31, 282)
    assert train[0] == cases[0] and test[-1] == cases[-1]


def test_region_based(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = brats.convert_brats2021(str(source), raw_root=str(tmp_path / "raw"),
                                     preprocessed_root=str(tmp_path / "pre"))
    assert folder.endswith("Dataset525_BraTS2021")
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before

    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["labels"] == {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3],
                                 "enhancing tumour": [3]}
    assert dataset["regions_class_order"] == [1, 2, 3] and dataset["numTraining"] == 4
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    case = CASES[0]
    for channel, m in enumerate(brats.MODALITIES):
        assert open(os.path.join(folder, "imagesTr", f"{case}_{channel:04d}.nii.gz"), "rb").read() == \
            open(source / case / f"{case}_{m}.nii.gz", "rb").read()
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{case}.nii.gz")))
    assert label[0, 0, 0] == 1 and label[1, 1, 1] == 2 and label[2, 3, 3] == 3
    assert os.listdir(os.path.join(folder, "labelsTs")) == [f"{CASES[-1]}.nii.gz"]
    splits = json.load(open(tmp_path / "pre" / "Dataset525_BraTS2021" / "splits_final.json"))
    assert splits == [{"train": CASES[:3], "val": [CASES[3]]}]

    back = brats.convert_folder_back_to_brats(os.path.join(folder, "labelsTr"), str(tmp_path / "submission"))
    assert len(back) == 4
    restored = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "submission" / f"{case}.nii.gz")))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(source / case / f"{case}_seg.nii.gz")))
    assert np.array_equal(restored, original)


def test_whole_tumour_form(tmp_path):
    source = make_source(tmp_path / "source")
    brats.main(["-i", str(source), "--whole_tumour"])  # nnUNet_raw / nnUNet_preprocessed from tests/conftest.py
    folder = os.path.join(os.environ["nnUNet_raw"], "Dataset526_BraTS2021WholeTumour")
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["labels"] == {"background": 0, "whole tumour": 1} and "regions_class_order" not in dataset
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{CASES[0]}.nii.gz")))
    assert set(np.unique(label)) == {0, 1} and label.sum() == 12
    assert os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset526_BraTS2021WholeTumour",
                                       "splits_final.json"))


@pytest.mark.parametrize("problem", ["missing_modality", "label_3", "spacing"])
def test_bad_case(tmp_path, problem):
    source = make_source(tmp_path / "source")
    case = CASES[2]
    if problem == "missing_modality":
        os.remove(source / case / f"{case}_t1ce.nii.gz")
    elif problem == "label_3":
        seg = np.zeros((3, 4, 5), np.uint8)
        seg[0, 0, 0] = 3
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(source / case / f"{case}_seg.nii.gz"))
    else:
        flair = sitk.ReadImage(str(source / case / f"{case}_flair.nii.gz"))
        flair.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(flair, str(source / case / f"{case}_flair.nii.gz"))
    match = {"missing_modality": "t1ce", "label_3": r"\[3\]", "spacing": "spacing"}[problem]
    with pytest.raises(DatasetConversionError, match=f"{case}.*{match}"):
        brats.convert_brats2021(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert os.listdir(tmp_path / "raw") == []
