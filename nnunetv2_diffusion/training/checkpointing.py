"""Atomic, weights-only checkpoints for nnU-Net trainers (the file handling is in ``checkpoint_io``)."""

import torch

from nnunetv2_diffusion.checkpoint_io import atomic_save, load_checkpoint_file
from nnunetv2_diffusion.networks.wrappers import unwrap_network


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
            "network_weights": unwrap_network(self.network).state_dict(),
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
        network = unwrap_network(self.network)
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
