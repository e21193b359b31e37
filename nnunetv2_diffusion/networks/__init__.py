"""Time-conditioned wrappers of nnU-Net's planned architectures."""

from nnunetv2_diffusion.networks.build import build_diffusion_network
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet

__all__ = ["DiffusionSegmentationUNet", "build_diffusion_network"]
