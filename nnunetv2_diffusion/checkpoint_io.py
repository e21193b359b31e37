"""Checkpoint files that survive a kill at any moment and load without running pickled code.

nnU-Net writes checkpoints with a plain ``torch.save`` (a kill during the write leaves a truncated file that
``--c`` then fails on) and loads them with ``weights_only=False`` (unpickling may run arbitrary code). Reading and
writing files lives here, at the package's top level, because training (saving, resuming, warm starts) and inference
(model folders) both need it and inference must not import training.
"""

import glob
import os
import re

import numpy as np
import torch

# What nnU-Net's checkpoints hold besides tensors and builtins: numpy scalars in the training log and _best_ema.
# These rebuild plain numbers only; no callable is reachable from them. Checkpoints pickled under NumPy 1.x name
# the scalar function by its old module path, numpy.core.
_NUMPY_SCALAR_GLOBALS = [
    np._core.multiarray.scalar, (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
    *(getattr(np.dtypes, name) for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType",
                                            "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
                                            "UInt32DType", "UInt64DType", "BoolDType")),
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: names the file and why."""


def load_checkpoint_file(path: str, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with numpy scalars allowed; clear errors for missing, truncated,
    corrupted or unsafe files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... depending on the damage
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours parts of its message
        reason = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: it is truncated, corrupted or holds "
                              f"objects other than weights and plain data ({reason})") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def atomic_save(save_fn, filename: str) -> None:
    """Calls ``save_fn(temporary_name)``, flushes it to disk, renames it over ``filename`` in one step and flushes
    the folder, so ``filename`` is always either the previous complete file or the new complete file. Temporary
    files left by a killed earlier run (``<filename>.partial-<pid>`` of a process that no longer exists) are removed
    first."""
    remove_stale_partial_files(filename)
    temporary = f"{filename}.partial-{os.getpid()}"
    try:
        save_fn(temporary)
        if not os.path.isfile(temporary):  # nothing written (checkpointing disabled)
            return
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, filename)
        _fsync_directory(os.path.dirname(os.path.abspath(filename)))  # make the rename itself survive a power loss
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fsync_directory(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows) have no directory fsync to do
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_partial_files(filename: str) -> None:
    """Deletes ``<filename>.partial-<pid>`` files whose writer process is gone (killed mid-write). Files of a live
    process (another run saving right now) are left alone."""
    for path in glob.glob(f"{glob.escape(filename)}.partial-*"):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _process_exists(int(pid))):
            os.remove(path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
