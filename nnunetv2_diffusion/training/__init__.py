"""nnU-Net trainers for diffusion segmentation. Everything exported here is found by stock nnU-Net commands by
class name (see nnunetv2_diffusion/discovery.py), so every class name must be globally unique."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import (
    nnUNetTrainerDiffSelfCond,
    nnUNetTrainerDiffSelfCondNext,
)
from nnunetv2_diffusion.training.variants.conditioning import (
    nnUNetTrainerDiff_blockFiLM,
    nnUNetTrainerDiffRecycle_blockFiLM,
    nnUNetTrainerDiffRecycleNext_blockFiLM,
    nnUNetTrainerDiffSelfCond_blockFiLM,
)
from nnunetv2_diffusion.training.variants.diffusion_timesteps import (
    nnUNetTrainerDiff_T10,
    nnUNetTrainerDiffRecycle_T10,
    nnUNetTrainerDiffRecycleNext_T10,
    nnUNetTrainerDiffSelfCond_T10,
)
from nnunetv2_diffusion.training.variants.loss import (
    nnUNetTrainerDiff_focalDice,
    nnUNetTrainerDiffRecycle_focalDice,
    nnUNetTrainerDiffRecycleNext_focalDice,
    nnUNetTrainerDiffSelfCond_focalDice,
)
from nnunetv2_diffusion.training.variants.noise_schedule import (
    nnUNetTrainerDiff_cosine,
    nnUNetTrainerDiffRecycle_cosine,
    nnUNetTrainerDiffRecycleNext_cosine,
    nnUNetTrainerDiffSelfCond_cosine,
)
from nnunetv2_diffusion.training.variants.timestep_sampling import (
    nnUNetTrainerDiff_importance,
    nnUNetTrainerDiffRecycle_importance,
    nnUNetTrainerDiffRecycleNext_importance,
    nnUNetTrainerDiffSelfCond_importance,
)
from nnunetv2_diffusion.training.variants.training_length import (
    nnUNetTrainer_10iters,
    nnUNetTrainer_300iters,
    nnUNetTrainer_1000iters,
    nnUNetTrainer_1300iters,
    nnUNetTrainer_3000iters,
    nnUNetTrainer_5000iters,
    nnUNetTrainerDiff_10iters,
    nnUNetTrainerDiff_300iters,
    nnUNetTrainerDiffRecycle_10iters,
    nnUNetTrainerDiffRecycle_300iters,
    nnUNetTrainerDiffRecycle_1000iters,
    nnUNetTrainerDiffRecycle_blockFiLM_10iters,
    nnUNetTrainerDiffRecycle_blockFiLM_300iters,
    nnUNetTrainerDiffRecycle_blockFiLM_1000iters,
    nnUNetTrainerDiffRecycle_blockFiLM_3000iters,
    nnUNetTrainerDiffRecycle_blockFiLM_5000iters,
    nnUNetTrainerDiffRecycle_blockFiLM_warm300iters,
    nnUNetTrainerDiffRecycleNext_10iters,
    nnUNetTrainerDiffRecycleNext_300iters,
    nnUNetTrainerDiffSelfCond_10iters,
    nnUNetTrainerDiffSelfCond_300iters,
    nnUNetTrainerDiffSelfCondNext_10iters,
    nnUNetTrainerDiffSelfCondNext_300iters,
)

__all__ = [
    "nnUNetTrainerDiff",
    "nnUNetTrainerDiffSelfCond",
    "nnUNetTrainerDiffSelfCondNext",
    "nnUNetTrainerDiffRecycleNext",
    "nnUNetTrainerDiffRecycle",
    "nnUNetTrainerDiff_T10",
    "nnUNetTrainerDiffSelfCond_T10",
    "nnUNetTrainerDiffRecycleNext_T10",
    "nnUNetTrainerDiffRecycle_T10",
    "nnUNetTrainerDiff_cosine",
    "nnUNetTrainerDiffSelfCond_cosine",
    "nnUNetTrainerDiffRecycleNext_cosine",
    "nnUNetTrainerDiffRecycle_cosine",
    "nnUNetTrainerDiff_importance",
    "nnUNetTrainerDiffSelfCond_importance",
    "nnUNetTrainerDiffRecycleNext_importance",
    "nnUNetTrainerDiffRecycle_importance",
    "nnUNetTrainerDiff_focalDice",
    "nnUNetTrainerDiffSelfCond_focalDice",
    "nnUNetTrainerDiffRecycleNext_focalDice",
    "nnUNetTrainerDiffRecycle_focalDice",
    "nnUNetTrainer_300iters",
    "nnUNetTrainerDiff_300iters",
    "nnUNetTrainerDiffRecycle_300iters",
    "nnUNetTrainerDiffRecycleNext_300iters",
    "nnUNetTrainerDiffSelfCond_300iters",
    "nnUNetTrainerDiffSelfCondNext_300iters",
    "nnUNetTrainer_1000iters",
    "nnUNetTrainer_1300iters",
    "nnUNetTrainer_3000iters",
    "nnUNetTrainer_5000iters",
    "nnUNetTrainerDiffRecycle_1000iters",
    "nnUNetTrainerDiff_blockFiLM",
    "nnUNetTrainerDiffSelfCond_blockFiLM",
    "nnUNetTrainerDiffRecycleNext_blockFiLM",
    "nnUNetTrainerDiffRecycle_blockFiLM",
    "nnUNetTrainerDiffRecycle_blockFiLM_10iters",
    "nnUNetTrainerDiffRecycle_blockFiLM_300iters",
    "nnUNetTrainerDiffRecycle_blockFiLM_1000iters",
    "nnUNetTrainerDiffRecycle_blockFiLM_3000iters",
    "nnUNetTrainerDiffRecycle_blockFiLM_5000iters",
    "nnUNetTrainerDiffRecycle_blockFiLM_warm300iters",
    "nnUNetTrainer_10iters",
    "nnUNetTrainerDiff_10iters",
    "nnUNetTrainerDiffRecycle_10iters",
    "nnUNetTrainerDiffRecycleNext_10iters",
    "nnUNetTrainerDiffSelfCond_10iters",
    "nnUNetTrainerDiffSelfCondNext_10iters",
]
