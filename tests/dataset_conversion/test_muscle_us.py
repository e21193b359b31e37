"""Dataset521_MuscleUS on a small fixture in the Mendeley 3jykz7wz8d layout (MuscleCNN/train, trainannot, ...)."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion import Dataset521_MuscleUS as muscle
from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError

# subject 5 straddles train (1 image) and test (2 images): its train image must move to the test set
LAYOUT = {"train": ["BB_anon_1_1", "GM_anon_1_2", "BB_anon_2_1", "TA_anon_3_1", "BB_anon_5_1"],
          "val": ["BB_anon_4_1", "GM_anon_6_1"],
          "test": ["GM_anon_5_2", "TA_anon_5_3", "BB_anon_8_1"]}
WITHOUT_MASK = "TA_anon_7_1"
H, W = 12, 16


def make_source(root):
    rng = np.random.default_rng(6)
    data = root / muscle.NESTED
    for split, uids in LAYOUT.items():
        os.makedirs(data / split)
        os.makedirs(data / f"{split}annot")
        for i, uid in enumerate(uids):
            image = rng.integers(0, 255, (H, W), dtype=np.uint8)
            if i == 0:  # gray stored as RGB
                sitk.WriteImage(sitk.GetImageFromArray(np.stack([image] * 3, -1), isVector=True),
                                str(data / split / f"{uid}.png"))
            else:
                sitk.WriteImage(sitk.GetImageFromArray(image), str(data / split / f"{uid}.png"))
            mask = np.zeros((H, W), np.uint8)
            mask[3:8, 4:12] = 1 if uid == "BB_anon_2_1" else 255  # {0, 1} is accepted as well
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(data / f"{split}annot" / f"{uid}.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((H, W), np.uint8)), str(data / "train" / f"{WITHOUT_MASK}.png"))
    return root


def test_conversion(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = muscle.convert_muscle_us(str(source), raw_root=str(tmp_path / "raw"),
                                      preprocessed_root=str(tmp_path / "pre"))
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before

    test = sorted(f[:-len(".png")] for f in os.listdir(os.path.join(folder, "labelsTs")))
    assert test == ["BB_anon_5_1", "BB_anon_8_1", "GM_anon_5_2", "TA_anon_5_3"]
    splits = json.load(open(tmp_path / "pre" / "Dataset521_MuscleUS" / "splits_final.json"))
    assert splits == [{"train": ["BB_anon_1_1", "BB_anon_2_1", "GM_anon_1_2", "TA_anon_3_1"],
                       "val": ["BB_anon_4_1", "GM_anon_6_1"]}]
    subjects = {s: {muscle.subject_of(u) for u in cases} for s, cases in
                (("train", splits[0]["train"]), ("val", splits[0]["val"]), ("test", test))}
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])

    report = json.load(open(os.path.join(folder, "conversion_report.json")))
    assert report["images_moved_to_keep_subjects_in_one_split"] == {"BB_anon_5_1": "train->test"}
    assert report["images_without_mask"] == [f"train/{WITHOUT_MASK}"]
    assert report["num_images"] == {"train": 4, "val": 2, "test": 4}
    for uid in ("BB_anon_1_1", "BB_anon_2_1"):
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{uid}.png")))
        image = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr", f"{uid}_0000.png")))
        assert label.shape == image.shape == (H, W) and label.sum() == 40 and label.max() == 1


@pytest.mark.parametrize("problem", ["value", "shape"])
def test_bad_mask(tmp_path, problem):
    source = make_source(tmp_path / "source")
    mask = np.zeros((H, W) if problem == "value" else (H - 1, W), np.uint8)
    mask[2, 2] = 128 if problem == "value" else 255
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(source / muscle.NESTED / "valannot" / "GM_anon_6_1.png"))
    with pytest.raises(DatasetConversionError, match="GM_anon_6_1"):
        muscle.convert_muscle_us(str(source / muscle.NESTED), raw_root=str(tmp_path / "raw"),
                                 preprocessed_root=str(tmp_path / "pre"))
    assert os.listdir(tmp_path / "raw") == []


def test_constant_image_is_refused(tmp_path):
    source = make_source(tmp_path / "source")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((H, W), 255, np.uint8)),
                    str(source / muscle.NESTED / "test" / "BB_anon_8_1.png"))
    with pytest.raises(DatasetConversionError, match=r"case BB_anon_8_1: image is constant \(every voxel is 255\)"):
        muscle.convert_muscle_us(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "pre"))
    assert os.listdir(tmp_path / "raw") == []


def test_empty_mask_is_kept_and_counted(tmp_path, capsys):
    source = make_source(tmp_path / "source")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((H, W), np.uint8)),
                    str(source / muscle.NESTED / "valannot" / "GM_anon_6_1.png"))
    folder = muscle.convert_muscle_us(str(source), raw_root=str(tmp_path / "raw"),
                                      preprocessed_root=str(tmp_path / "pre"))
    assert json.load(open(os.path.join(folder, "conversion_report.json")))["empty_masks"] == ["GM_anon_6_1"]
    assert "empty masks kept: 1" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(folder, "labelsTr", "GM_anon_6_1.png"))
