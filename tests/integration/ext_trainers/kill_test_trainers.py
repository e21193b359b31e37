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
