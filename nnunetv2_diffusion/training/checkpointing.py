"""Checkpoints that survive a kill at any moment and load without running pickled code.

nnU-Net writes checkpoints with a plain ``torch.save`` (a kill during the write leaves a truncated file that
``--c`` then fails on) and loads them with ``weights_only=False`` (unpickling may run arbitrary code).
"""

import glob
import os
import re

import numpy as np
import torch

# What nnU-Net's checkpoints hold besides tensors and builtins: numpy scalars in the training log and _best_ema.
# These rebuild plain numbers only; no callable is reachable from them.
_NUMPY_SCALAR_GLOBALS = [
    np._core.multiarray.scalar, np.dtype,
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


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The module that owns the weights under DDP and/or torch.compile wrappers."""
    network = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    return getattr(network, "_orig_mod", network)


class SafeCheckpointMixin:
    """For nnUNetTrainer subclasses: atomic ``save_checkpoint`` (checkpoint_latest/best/final alike) and
    weights-only ``load_checkpoint`` (used by ``--c`` and ``--val``).

    Both write and read what nnU-Net 2.8.1's do (weights, optimiser, grad scaler, epoch, log, EMA pseudo-Dice,
    mirroring axes) but are written here rather than called: nnU-Net's ``save_checkpoint`` writes straight onto the
    final name and leaves no way to add entries, and its ``load_checkpoint`` crashes when handed an already loaded
    dict (``UnboundLocalError``) and would otherwise unpickle the file with ``weights_only=False``.
    """

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net 2.8.1's checkpoint dict (same keys, same conditions) plus :meth:`extra_checkpoint_state`,
        written once through :func:`atomic_save`."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": _unwrapped(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.extra_checkpoint_state(),
        }
        atomic_save(lambda temporary: torch.save(checkpoint, temporary), filename)

    def extra_checkpoint_state(self) -> dict:
        """Entries a subclass adds to every checkpoint; :meth:`restore_extra_checkpoint_state` reads them back."""
        return {}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Called by :meth:`load_checkpoint` with the loaded dict, after nnU-Net's entries are restored."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = load_checkpoint_file(checkpoint, map_location=self.device)
        network = _unwrapped(self.network)
        own_keys = network.state_dict().keys()
        # checkpoints written from a DataParallel-wrapped network prefix every key with 'module.'
        weights = {k[7:] if k not in own_keys and k.startswith("module.") else k: v
                   for k, v in checkpoint["network_weights"].items()}
        network.load_state_dict(weights)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.restore_extra_checkpoint_state(checkpoint)
