"""Truncated NIfTI files: SimpleITK reads them without complaint, ``nifti_truncation`` does not."""

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_diffusion.file_integrity import nifti_truncation


@pytest.mark.parametrize("ending,expected", [(".nii.gz", "its gzip stream is cut off or damaged"),
                                             (".nii", "it is truncated: 2768 bytes where its header announces 5536")])
def test_a_truncated_nifti_file_is_found_although_simpleitk_reads_it(tmp_path, ending, expected):
    array = np.random.default_rng(0).normal(size=(1, 36, 36)).astype(np.float32) + 5
    whole, cut = str(tmp_path / f"whole{ending}"), str(tmp_path / f"cut{ending}")
    sitk.WriteImage(sitk.GetImageFromArray(array), whole)
    data = open(whole, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])

    assert nifti_truncation(whole) is None
    assert expected in nifti_truncation(cut)
    read = sitk.GetArrayFromImage(sitk.ReadImage(cut))  # the reason for the check: no error, zeros instead
    assert read.shape == array.shape and (read == 0).sum() > array.size // 3


def test_a_file_that_is_not_nifti_is_named_as_such(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"not an image")
    assert "its NIfTI header cannot be read" in nifti_truncation(str(path))
