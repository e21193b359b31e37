"""Timestep sampling: loss-aware importance sampling (p(t) ~ sqrt(EMA of loss^2)) with the unbiased loss weight
1 / (p(t) T) instead of uniform t. The sampler's statistics are saved with every checkpoint."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import nnUNetTrainerDiffSelfCond


class nnUNetTrainerDiff_importance(nnUNetTrainerDiff):
    timestep_sampling = "importance"


class nnUNetTrainerDiffSelfCond_importance(nnUNetTrainerDiffSelfCond):
    timestep_sampling = "importance"


class nnUNetTrainerDiffRecycleNext_importance(nnUNetTrainerDiffRecycleNext):
    timestep_sampling = "importance"


class nnUNetTrainerDiffRecycle_importance(nnUNetTrainerDiffRecycle):
    timestep_sampling = "importance"
