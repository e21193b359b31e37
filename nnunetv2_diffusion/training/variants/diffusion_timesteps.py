"""Number of training timesteps T (paper: 5). Inference samples every training step by default, as the paper does
at T = 5; ``nnUNetv2_predict_diffusion --steps`` may use fewer."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import nnUNetTrainerDiffSelfCond


class nnUNetTrainerDiff_T10(nnUNetTrainerDiff):
    num_diffusion_timesteps = 10
    default_sampling_steps = 10


class nnUNetTrainerDiffSelfCond_T10(nnUNetTrainerDiffSelfCond):
    num_diffusion_timesteps = 10
    default_sampling_steps = 10


class nnUNetTrainerDiffRecycleNext_T10(nnUNetTrainerDiffRecycleNext):
    num_diffusion_timesteps = 10
    default_sampling_steps = 10


class nnUNetTrainerDiffRecycle_T10(nnUNetTrainerDiffRecycle):
    num_diffusion_timesteps = 10
    default_sampling_steps = 10
