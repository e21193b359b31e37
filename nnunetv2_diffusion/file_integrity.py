"""Checks of image files that their usual readers skip.

SimpleITK's NIfTI reader (checked with SimpleITK 2.5.7, which nnU-Net's ``SimpleITKIO`` uses for ``.nii.gz``) reads
a truncated ``.nii`` or ``.nii.gz`` without an error and fills the voxels the file lacks with zeros, so a half-copied
image would be converted, trained on or segmented as if it were whole. nibabel refuses such files, but reading every
voxel costs a full decode; :func:`nifti_truncation` only counts the bytes.
"""

import gzip
import os
import zlib

import numpy as np

NIFTI_ENDINGS = (".nii", ".nii.gz")
_CHUNK_BYTES = 1 << 22


def nifti_truncation(path: str) -> str | None:
    """Why the NIfTI file ``path`` holds fewer voxel bytes than its header announces, or None when it is complete.

    The header is read with nibabel; a ``.nii.gz`` is decompressed in chunks (nothing is kept), a ``.nii`` is only
    measured. Returns a short reason (for an error message) for an unreadable header, a cut-off or damaged gzip
    stream, or a file shorter than header offset + voxel bytes.
    """
    import nibabel

    try:
        proxy = nibabel.load(path).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize
    except Exception as e:  # nibabel raises ImageFileError, OSError, ValueError, ... for a damaged header
        return f"its NIfTI header cannot be read ({_first_line(e)})"
    if path.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(_CHUNK_BYTES):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as e:
            return f"its gzip stream is cut off or damaged ({_first_line(e)})"
    else:
        size = os.path.getsize(path)
    if size < expected:
        return f"it is truncated: {size} bytes where its header announces {expected}"
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
