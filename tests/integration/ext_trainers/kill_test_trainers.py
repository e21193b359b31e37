"""A trainer for the kill -9 test, found by stock nnUNetv2_train through nnUNet_extTrainer (next to ours)."""

import torch

from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle


class nnUNetTrainerDiffRecycle_KillTest(nnUNetTrainerDiffRecycle):
    """6 short epochs with a checkpoint after every one, so a kill lands between checkpoints."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.num_iterations_per_epoch = 6
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # logged for the test, which compares it with the checkpoint: --c restored the optimizer, not only the weights
        self.print_to_log_file(f"restored momentum: {momentum_total(self.optimizer.state_dict()):.9e}")


def momentum_total(optimizer_state: dict) -> float:
    """Sum of |momentum buffer| over every parameter of an SGD optimizer's state_dict."""
    return sum(float(s["momentum_buffer"].abs().sum()) for s in optimizer_state["state"].values())
