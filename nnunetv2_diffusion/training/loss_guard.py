"""Stop training at a non-finite loss instead of carrying NaN weights into the next checkpoint."""

import torch

MAX_SKIPPED_STEPS = 5
"""Under fp16 mixed precision, this many non-finite losses in a row stop training; fewer are skipped."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; names the epoch and iteration."""


class FiniteLossMixin:
    """For nnUNetTrainer subclasses whose ``train_step`` calls :meth:`ensure_finite_loss` before ``backward``.

    A non-finite loss stops training with :class:`NonFiniteLossError` before it can reach the weights. Nothing is
    saved after that point, so the checkpoints on disk are the last good ones (nnU-Net saves only at epoch ends and
    at the end of training). Under fp16 mixed precision (CUDA, nnU-Net's grad scaler) a forward pass can overflow
    once; stock nnU-Net's GradScaler then skips that step (its NaN gradients), and so does this guard, without the
    backward pass, up to :data:`MAX_SKIPPED_STEPS` in a row. (The loss scale is left alone: it scales gradients, not
    the forward pass that overflowed.)"""

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0

    def ensure_finite_loss(self, loss: torch.Tensor) -> bool:
        """True for a finite loss; False for a non-finite one the caller must skip (fp16 only); raises otherwise."""
        iteration = getattr(self, "_iteration_in_epoch", 0)
        self._iteration_in_epoch = iteration + 1
        if torch.isfinite(loss.detach()).all():
            self._skipped_in_a_row = 0
            return True
        where = f"at epoch {self.current_epoch}, iteration {iteration}"
        skipped = getattr(self, "_skipped_in_a_row", 0) + 1
        scaler = getattr(self, "grad_scaler", None)
        if scaler is not None and skipped < MAX_SKIPPED_STEPS:
            self._skipped_in_a_row = skipped
            self.print_to_log_file(f"non-finite training loss ({loss.item()}) {where} under mixed precision: step "
                                   f"skipped ({skipped} in a row; {MAX_SKIPPED_STEPS} stop training)")
            return False
        message = (f"non-finite training loss ({loss.item()}) {where}"
                   f"{f', the {skipped}th in a row' if scaler is not None else ''}: training stopped; the "
                   f"checkpoints in {self.output_folder} are from before it. Lower the learning rate, check the input "
                   f"data for NaN/inf, or resume with --c.")
        self.print_to_log_file(message)
        raise NonFiniteLossError(message)
