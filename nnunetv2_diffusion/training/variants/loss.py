"""Loss: the paper's foreground-mean Dice + 20 x focal (gamma = 2) instead of nnU-Net's Dice + CE; deep supervision
keeps nnU-Net's output weights."""

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import nnUNetTrainerDiffSelfCond


class nnUNetTrainerDiff_focalDice(nnUNetTrainerDiff):
    segmentation_loss = "dice_focal"


class nnUNetTrainerDiffSelfCond_focalDice(nnUNetTrainerDiffSelfCond):
    segmentation_loss = "dice_focal"


class nnUNetTrainerDiffRecycleNext_focalDice(nnUNetTrainerDiffRecycleNext):
    segmentation_loss = "dice_focal"


class nnUNetTrainerDiffRecycle_focalDice(nnUNetTrainerDiffRecycle):
    segmentation_loss = "dice_focal"
