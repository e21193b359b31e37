"""Unit tests of the helpers shared by the dataset conversion scripts."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diffusion.dataset_conversion._common import (
    DatasetConversionError,
    Geometry,
    RawDatasetWriter,
    check_image_intensities,
    check_same_grid,
    check_splits,
    checked_label_array,
    split_off_tail,
    tail_count,
    to_grayscale,
)


def _write_case(writer, case, test=False):
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    sitk.WriteImage(image, writer.image_path(case, 0, test))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), writer.label_path(case, test))


def _small_dataset(tmp_path, overwrite=False, splits=None, cases=("a", "b")):
    with RawDatasetWriter(900, "Toy", ".nii.gz", overwrite=overwrite, raw_root=str(tmp_path / "raw"),
                          preprocessed_root=str(tmp_path / "pre"), writes_splits=splits is not None) as w:
        for c in cases:
            _write_case(w, c)
        w.write_dataset_json({"0": "MRI"}, {"background": 0, "fg": 1}, citation="someone 2024")
        return w.finish(splits)


def test_error_names_case_and_is_value_error():
    err = DatasetConversionError("case_007", "label values [3] outside the documented set [0, 1, 2]")
    assert isinstance(err, ValueError)
    assert "case_007" in str(err) and "[3]" in str(err)
    assert err.case == "case_007"


def test_tail_counts():
    assert tail_count(158, 0.19) == 30
    assert tail_count(208, 0.2) == 42
    assert tail_count(166, 0.1) == 17
    assert tail_count(5, 0.01) == 1 and tail_count(2, 0.99) == 1 and tail_count(1, 0.5) == 0
    assert split_off_tail(list("abcdef"), 0.34) == (list("abcd"), list("ef"))


def test_writer_stages_and_refuses_existing(tmp_path):
    folder = _small_dataset(tmp_path, splits=[{"train": ["a"], "val": ["b"]}])
    assert sorted(os.listdir(tmp_path / "raw")) == ["Dataset900_Toy"]  # no staging folder left
    content = json.load(open(os.path.join(folder, "dataset.json")))
    assert content["numTraining"] == 2 and content["citation"] == "someone 2024"
    assert json.load(open(tmp_path / "pre" / "Dataset900_Toy" / "splits_final.json")) == [{"train": ["a"],
                                                                                        "val": ["b"]}]
    with pytest.raises(FileExistsError, match="overwrite"):
        _small_dataset(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):  # the preprocessed splits are protected as well
        with RawDatasetWriter(900, "Toy", ".nii.gz", raw_root=str(tmp_path / "raw2"),
                              preprocessed_root=str(tmp_path / "pre"), writes_splits=True):
            pass
    _small_dataset(tmp_path, overwrite=True, cases=("c",))
    assert os.listdir(os.path.join(folder, "labelsTr")) == ["c.nii.gz"]
    assert sorted(os.listdir(tmp_path / "raw")) == ["Dataset900_Toy"]


def test_writer_refuses_same_id_other_name(tmp_path):
    (tmp_path / "raw" / "Dataset900_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already used"):
        _small_dataset(tmp_path, overwrite=True)


def test_failed_conversion_leaves_nothing(tmp_path):
    with pytest.raises(DatasetConversionError):
        with RawDatasetWriter(900, "Toy", ".nii.gz", raw_root=str(tmp_path / "raw")) as w:
            _write_case(w, "a")
            raise DatasetConversionError("b", "broken")
    assert os.listdir(tmp_path / "raw") == []


def test_check_splits():
    check_splits([{"train": ["a"], "val": ["b"]}], ["a", "b"])
    with pytest.raises(ValueError, match="both"):
        check_splits([{"train": ["a", "b"], "val": ["b"]}], ["a", "b"])
    with pytest.raises(ValueError, match="not in imagesTr"):
        check_splits([{"train": ["a"], "val": ["z"]}], ["a", "b"])


def test_checked_label_array():
    label = sitk.GetImageFromArray(np.array([[0.0, 1.0], [2.0, 0.0]], np.float32))
    array, cast = checked_label_array(label, [0, 1, 2], "c1")
    assert cast and array.dtype == np.uint8 and array.tolist() == [[0, 1], [2, 0]]
    with pytest.raises(DatasetConversionError, match="c2.*non-integer"):
        checked_label_array(sitk.GetImageFromArray(np.array([[0.5, 1.0]], np.float32)), [0, 1], "c2")
    with pytest.raises(DatasetConversionError, match=r"c3.*\[3\]"):
        checked_label_array(sitk.GetImageFromArray(np.array([[0, 3]], np.uint8)), [0, 1, 2], "c3")


def test_check_same_grid():
    ref = Geometry((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert check_same_grid(ref, ref, "c", "x") is False
    assert check_same_grid(ref, Geometry(ref.size, ref.spacing, (1e-4, 0, 0), ref.direction), "c", "x") is True
    for other in (Geometry((4, 5, 7), ref.spacing, ref.origin, ref.direction),
                  Geometry(ref.size, (1.0, 1.0, 2.5), ref.origin, ref.direction),
                  Geometry(ref.size, ref.spacing, (5.0, 0, 0), ref.direction)):
        with pytest.raises(DatasetConversionError, match="case c"):
            check_same_grid(ref, other, "c", "image and label")


def test_to_grayscale():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(to_grayscale(np.stack([gray] * 3, -1), "c", "image"), gray)
    assert to_grayscale(np.zeros((2, 3, 3), np.uint8) + [255, 0, 0], "c", "image").max() == 76
    with pytest.raises(DatasetConversionError):
        to_grayscale(np.zeros((2, 3, 2), np.uint8), "c", "image")


def test_check_image_intensities():
    check_image_intensities(np.array([[0.0, 1.5], [2.0, -3.0]], np.float32), "c", "image")
    check_image_intensities(np.array([[0, 255]], np.uint8), "c", "image")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(DatasetConversionError, match=r"case c4: channel 1 \(x.nii.gz\) holds 1 NaN or infinite"):
            check_image_intensities(np.array([[0.0, bad], [2.0, 1.0]], np.float32), "c4", "channel 1 (x.nii.gz)")
    with pytest.raises(DatasetConversionError, match=r"case c5: image is constant \(every voxel is 7\)"):
        check_image_intensities(np.full((3, 4), 7, np.uint8), "c5", "image")
    with pytest.raises(DatasetConversionError, match="case c6: image is constant"):
        check_image_intensities(np.zeros((2, 3, 4), np.float32), "c6", "image")
