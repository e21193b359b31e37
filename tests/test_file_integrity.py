"""Truncated NIfTI files and NaN voxels: SimpleITK reads them without complaint, ``nifti_file_problem`` does not."""

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diffusion import file_integrity
from nnunetv2_diffusion.file_integrity import nifti_file_problem


@pytest.mark.parametrize("ending,expected", [(".nii.gz", "its gzip stream is cut off or damaged"),
                                             (".nii", "it is truncated: 2768 bytes where its header announces 5536")])
def test_a_truncated_nifti_file_is_found_although_simpleitk_reads_it(tmp_path, ending, expected):
    array = np.random.default_rng(0).normal(size=(1, 36, 36)).astype(np.float32) + 5
    whole, cut = str(tmp_path / f"whole{ending}"), str(tmp_path / f"cut{ending}")
    sitk.WriteImage(sitk.GetImageFromArray(array), whole)
    data = open(whole, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])

    assert nifti_file_problem(whole) is None
    assert expected in nifti_file_problem(cut)
    read = sitk.GetArrayFromImage(sitk.ReadImage(cut))  # the reason for the check: no error, zeros instead
    assert read.shape == array.shape and (read == 0).sum() > array.size // 3


def test_a_file_that_is_not_nifti_is_named_as_such(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"not an image")
    assert "its NIfTI header cannot be read" in nifti_file_problem(str(path))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("chunk_bytes", [7, 1 << 22])  # 7: voxels split across chunks, header across many chunks
def test_nan_and_inf_voxels_are_counted_although_simpleitk_reads_zeros(tmp_path, monkeypatch, ending, chunk_bytes):
    monkeypatch.setattr(file_integrity, "_CHUNK_BYTES", chunk_bytes)
    array = np.random.default_rng(0).normal(size=(3, 20, 20)).astype(np.float32)
    clean, dirty = str(tmp_path / f"clean{ending}"), str(tmp_path / f"dirty{ending}")
    sitk.WriteImage(sitk.GetImageFromArray(array), clean)
    array[0, 0, 0], array[1, 5, 7], array[2, 19, 19] = np.nan, np.inf, -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), dirty)

    assert file_integrity.nifti_file_problem(clean) is None
    assert file_integrity.nifti_file_problem(dirty) == "it holds 3 NaN or infinite values"
    assert file_integrity.nifti_file_problem(dirty, check_finite=False) is None
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(dirty))).all()  # the reason for the check


def test_integer_images_are_only_measured(tmp_path, monkeypatch):
    path, cut = str(tmp_path / "labels.nii"), str(tmp_path / "cut.nii")
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(6000, dtype=np.int16).reshape(10, 20, 30)), path)
    data = open(path, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) - 100])

    def no_reading(*_args, **_kwargs):
        raise AssertionError("the voxels of an integer .nii need not be read")

    monkeypatch.setattr(file_integrity, "open", no_reading, raising=False)  # the module's open, not nibabel's
    assert file_integrity.nifti_file_problem(path) is None
    assert "it is truncated" in file_integrity.nifti_file_problem(cut)
