"""Discovery shims for stock nnU-Net: every module here only re-exports trainer classes (see
nnunetv2_diffusion/discovery.py). nnU-Net imports these files under bare module names, so keep them free of logic."""
