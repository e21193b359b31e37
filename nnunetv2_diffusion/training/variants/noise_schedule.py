"""Noise schedule: the cosine schedule of Nichol & Dhariwal 2021 instead of the paper's downsampled linear one."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import nnUNetTrainerDiffSelfCond


class nnUNetTrainerDiff_cosine(nnUNetTrainerDiff):
    noise_schedule = "cosine"


class nnUNetTrainerDiffSelfCond_cosine(nnUNetTrainerDiffSelfCond):
    noise_schedule = "cosine"


class nnUNetTrainerDiffRecycleNext_cosine(nnUNetTrainerDiffRecycleNext):
    noise_schedule = "cosine"


class nnUNetTrainerDiffRecycle_cosine(nnUNetTrainerDiffRecycle):
    noise_schedule = "cosine"
