"""Pure-torch diffusion core: noise schedules, the forward process, reverse samplers and timestep samplers.

Nothing here imports nnunetv2, so this package can be read and tested on its own.
"""

from nnunetv2_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from nnunetv2_diffusion.diffusion.samplers import SAMPLERS, DDIMSampler, DDPMSampler, make_sampler
from nnunetv2_diffusion.diffusion.schedules import (
    SCHEDULES,
    betas_from_alphas_cumprod,
    cosine_alphas_cumprod,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    validate_alphas_cumprod,
)
from nnunetv2_diffusion.diffusion.timestep_samplers import (
    TIMESTEP_SAMPLERS,
    ImportanceTimestepSampler,
    UniformTimestepSampler,
    make_timestep_sampler,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "TIMESTEP_SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "ImportanceTimestepSampler",
    "UniformTimestepSampler",
    "betas_from_alphas_cumprod",
    "cosine_alphas_cumprod",
    "linear_alphas_cumprod",
    "make_alphas_cumprod",
    "make_sampler",
    "make_timestep_sampler",
    "validate_alphas_cumprod",
]
