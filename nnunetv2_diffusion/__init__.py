"""Diffusion segmentation with the recycling training strategy, as nnU-Net v2 trainers and predictors."""

__version__ = "0.1.0"
