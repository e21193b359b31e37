"""Re-exports every nnunetv2-diffusion trainer for nnU-Net's ``nnUNet_extTrainer`` lookup."""

from nnunetv2_diffusion.training import *  # noqa: F401,F403
