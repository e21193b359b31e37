"""Dataset524_MSDProstate on a small fixture in the MSD Task05 layout (4D images, modality last)."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from source_snapshot import snapshot

from nnunetv2_diffusion.dataset_conversion._common import DatasetConversionError
from nnunetv2_diffusion.dataset_conversion.Dataset524_MSDProstate import convert_msd_prostate

TRAIN = ["prostate_00", "prostate_01", "prostate_04"]
TEST = ["prostate_03"]
SPACING = (0.6, 0.6, 3.6)


def four_d(t2, adc):
    """A 4D (x, y, z, 2) image as MSD stores it, channel 0 T2 and channel 1 ADC."""
    volumes = []
    for array in (t2, adc):
        v = sitk.GetImageFromArray(array)
        v.SetSpacing(SPACING)
        v.SetOrigin((-5.0, 2.0, 1.0))
        volumes.append(v)
    return sitk.JoinSeries(volumes)


def make_source(root, channels=2):
    rng = np.random.default_rng(5)
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(root / d)
    for case in TRAIN + TEST:
        t2 = rng.integers(0, 1000, (4, 6, 5)).astype(np.float32)
        image = four_d(t2, t2 / 2) if channels == 2 else sitk.JoinSeries([sitk.GetImageFromArray(t2)])
        if channels != 2:
            image.SetSpacing(SPACING + (1.0,))
            image.SetOrigin((-5.0, 2.0, 1.0, 0.0))
        sitk.WriteImage(image, str(root / ("imagesTs" if case in TEST else "imagesTr") / f"{case}.nii.gz"))
        if case in TRAIN:
            label = sitk.GetImageFromArray(rng.integers(0, 3, (4, 6, 5)).astype(np.uint8))
            label.SetSpacing(SPACING)
            label.SetOrigin((-5.0, 2.0, 1.0))
            sitk.WriteImage(label, str(root / "labelsTr" / f"{case}.nii.gz"))
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    meta = {"name": "PROSTATE", "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": 3, "numTest": 1,
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in TRAIN],
            "test": [f"./imagesTs/{c}.nii.gz" for c in TEST]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_conversion(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    source = make_source(tmp_path / "source")
    before = snapshot(source)
    folder = convert_msd_prostate(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "p"))
    verify_dataset_integrity(folder, num_processes=1)
    assert snapshot(source) == before
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["channel_names"] == {"0": "T2", "1": "ADC"}
    assert dataset["labels"] == {"background": 0, "PZ": 1, "TZ": 2} and dataset["numTraining"] == 3
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == ["prostate_03_0000.nii.gz",
                                                                    "prostate_03_0001.nii.gz"]
    assert not os.path.exists(os.path.join(folder, "labelsTs"))
    t2 = sitk.ReadImage(os.path.join(folder, "imagesTr", "prostate_01_0000.nii.gz"))
    adc = sitk.ReadImage(os.path.join(folder, "imagesTr", "prostate_01_0001.nii.gz"))
    assert t2.GetDimension() == 3 and t2.GetSpacing() == pytest.approx(SPACING)
    assert t2.GetOrigin() == pytest.approx((-5.0, 2.0, 1.0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(adc), sitk.GetArrayFromImage(t2) / 2)
    assert not os.path.exists(tmp_path / "p" / "Dataset524_MSDProstate")


def test_missing_modality(tmp_path):
    source = make_source(tmp_path / "source", channels=1)
    with pytest.raises(DatasetConversionError, match="prostate_00: image has 1 modalities, expected 2"):
        convert_msd_prostate(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "p"))
    assert os.listdir(tmp_path / "raw") == []


def test_nan_in_one_modality_is_refused(tmp_path):
    source = make_source(tmp_path / "source")
    path = source / "imagesTr" / "prostate_04.nii.gz"
    t2 = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    adc = t2.copy()
    adc[2, 3, 4] = np.nan
    sitk.WriteImage(four_d(t2, adc), str(path))
    with pytest.raises(DatasetConversionError, match=r"case prostate_04: channel 1 \(ADC\) holds 1 NaN or infinite"):
        convert_msd_prostate(str(source), raw_root=str(tmp_path / "raw"), preprocessed_root=str(tmp_path / "p"))
    assert os.listdir(tmp_path / "raw") == []
