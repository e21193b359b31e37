"""Stop training at the first non-finite loss instead of carrying NaN weights into the next checkpoint."""

import torch


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; names the epoch and iteration."""


class FiniteLossMixin:
    """For nnUNetTrainer subclasses whose ``train_step`` calls :meth:`ensure_finite_loss` before ``backward``.

    A non-finite loss stops training with :class:`NonFiniteLossError` before it can reach the weights. Nothing is
    saved after that point, so the checkpoints on disk are the last good ones (nnU-Net saves only at epoch ends and
    at the end of training)."""

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0

    def ensure_finite_loss(self, loss: torch.Tensor) -> None:
        iteration = getattr(self, "_iteration_in_epoch", 0)
        self._iteration_in_epoch = iteration + 1
        if not torch.isfinite(loss.detach()).all():
            message = (f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, iteration "
                       f"{iteration}: training stopped; the checkpoints in {self.output_folder} are from before it. "
                       f"Lower the learning rate, check the input data for NaN/inf, or resume with --c.")
            self.print_to_log_file(message)
            raise NonFiniteLossError(message)
