"""Checks of image files that their usual readers skip.

SimpleITK's NIfTI reader (checked with SimpleITK 2.5.7, which nnU-Net's ``SimpleITKIO`` uses for ``.nii.gz``) reads
a truncated ``.nii`` or ``.nii.gz`` without an error and fills the voxels the file lacks with zeros, so a half-copied
image would be converted, trained on or segmented as if it were whole; it also returns 0 for NaN and infinite voxels.
nibabel refuses truncated files, but :func:`nifti_file_problem` finds both in one streaming pass without keeping the
image.
"""

import gzip
import os
import zlib

import numpy as np

NIFTI_ENDINGS = (".nii", ".nii.gz")
_CHUNK_BYTES = 1 << 22


def nifti_file_problem(path: str, *, check_finite: bool = True) -> str | None:
    """What is wrong with the NIfTI file ``path`` that SimpleITK would not say, or None when nothing is.

    In one streaming pass (a ``.nii.gz`` is decompressed in chunks, nothing is kept): a header nibabel cannot read,
    a cut-off or damaged gzip stream, fewer voxel bytes than the header announces, and, with ``check_finite`` and a
    floating-point data type, NaN or infinite voxels (SimpleITK reads those as 0). A ``.nii`` of integer voxels is
    only measured. Returns a short reason for an error message.
    """
    import nibabel

    try:
        proxy = nibabel.load(path).dataobj
        offset, dtype = int(proxy.offset), np.dtype(proxy.dtype)
        expected = offset + int(np.prod(proxy.shape, dtype=np.int64)) * dtype.itemsize
    except Exception as e:  # nibabel raises ImageFileError, OSError, ValueError, ... for a damaged header
        return f"its NIfTI header cannot be read ({_first_line(e)})"
    scan_values = check_finite and dtype.kind in "fc"
    if not path.endswith(".gz") and not scan_values:
        size = os.path.getsize(path)
        return None if size >= expected else f"it is truncated: {size} bytes where its header announces {expected}"
    counter = _NonFiniteCounter(offset, expected, dtype) if scan_values else None
    size = 0
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            while chunk := f.read(_CHUNK_BYTES):
                if counter is not None:
                    counter.feed(chunk, size)
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return f"its gzip stream is cut off or damaged ({_first_line(e)})"
    if size < expected:
        return f"it is truncated: {size} bytes where its header announces {expected}"
    if counter is not None and counter.count:
        return f"it holds {counter.count} NaN or infinite values"
    return None


class _NonFiniteCounter:
    """Counts NaN/inf among the voxels stored in bytes [offset, end) of a stream fed in arbitrary chunks."""

    def __init__(self, offset: int, end: int, dtype: np.dtype):
        self.offset, self.end, self.dtype = offset, end, dtype
        self.pending = b""  # bytes of a voxel split across two chunks
        self.count = 0

    def feed(self, chunk: bytes, position: int) -> None:
        """chunk: the stream's bytes starting at byte ``position``."""
        data = chunk[max(self.offset - position, 0):max(self.end - position, 0)]
        if not data:
            return
        data = self.pending + data
        whole = len(data) - len(data) % self.dtype.itemsize
        self.pending = data[whole:]
        self.count += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:whole], dtype=self.dtype))))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
