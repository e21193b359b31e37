"""Timestep conditioning inside every convolution block ('block', networks/diffusion_unet.py): FiLM after each
normalisation and before its nonlinearity, zero-initialised together with the mask weights of the first convolution,
so training starts from a network that computes a stock nnU-Net function of the image."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import nnUNetTrainerDiffSelfCond


class nnUNetTrainerDiff_blockFiLM(nnUNetTrainerDiff):
    conditioning = "block"


class nnUNetTrainerDiffSelfCond_blockFiLM(nnUNetTrainerDiffSelfCond):
    conditioning = "block"


class nnUNetTrainerDiffRecycleNext_blockFiLM(nnUNetTrainerDiffRecycleNext):
    conditioning = "block"


class nnUNetTrainerDiffRecycle_blockFiLM(nnUNetTrainerDiffRecycle):
    conditioning = "block"
