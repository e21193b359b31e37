"""nnU-Net trainers for diffusion segmentation. Everything exported here is found by stock nnU-Net commands by
class name (see nnunetv2_diffusion/discovery.py), so every class name must be globally unique."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.variants.training_length import (
    nnUNetTrainer_10iters,
    nnUNetTrainer_300iters,
    nnUNetTrainerDiff_10iters,
    nnUNetTrainerDiff_300iters,
    nnUNetTrainerDiffRecycle_10iters,
    nnUNetTrainerDiffRecycle_300iters,
)

__all__ = [
    "nnUNetTrainerDiff",
    "nnUNetTrainerDiffRecycle",
    "nnUNetTrainer_10iters",
    "nnUNetTrainer_300iters",
    "nnUNetTrainerDiff_10iters",
    "nnUNetTrainerDiff_300iters",
    "nnUNetTrainerDiffRecycle_10iters",
    "nnUNetTrainerDiffRecycle_300iters",
]
