"""Checkpoints that survive a kill at any moment and load without running pickled code.

nnU-Net writes checkpoints with a plain ``torch.save`` (a kill during the write leaves a truncated file that
``--c`` then fails on) and loads them with ``weights_only=False`` (unpickling may run arbitrary code).
"""

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
    """Calls ``save_fn(temporary_name)``, flushes it to disk, then renames it over ``filename`` in one step, so
    ``filename`` is always either the previous complete file or the new complete file."""
    temporary = f"{filename}.partial-{os.getpid()}"
    try:
        save_fn(temporary)
        if not os.path.isfile(temporary):  # nnU-Net skips saving when checkpointing is disabled
            return
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, filename)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The module that owns the weights under DDP and/or torch.compile wrappers."""
    network = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    return getattr(network, "_orig_mod", network)


class SafeCheckpointMixin:
    """For nnUNetTrainer subclasses: atomic ``save_checkpoint`` (checkpoint_latest/best/final alike) and
    weights-only ``load_checkpoint`` (used by ``--c`` and ``--val``).

    ``load_checkpoint`` restores what nnU-Net 2.8.1's does (weights, optimiser, grad scaler, epoch, log, EMA
    pseudo-Dice, mirroring axes) but is written here rather than called, because nnU-Net's crashes when handed an
    already loaded dict (``UnboundLocalError``) and would otherwise unpickle the file with ``weights_only=False``.
    """

    def save_checkpoint(self, filename: str) -> None:
        atomic_save(super().save_checkpoint, filename)

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
