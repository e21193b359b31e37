"""The forward process q(x_t | x_0) of a discrete Gaussian diffusion; the reverse steps are the samplers'.

Timesteps are indices t in {0, ..., T-1} into ``alphas_cumprod``; x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
Equation numbers refer to Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
"""

import torch

from nnunetv2_diffusion.diffusion.schedules import (
    betas_from_alphas_cumprod,
    make_alphas_cumprod,
    validate_alphas_cumprod,
)


def _broadcast(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``coefficients[t]`` as (B, 1, ..., 1) in ``like``'s dtype and device, to broadcast against ``like``.

    Args:
        coefficients: float64 (T,) on the CPU.
        t: long (B,) in [0, T-1], on any device.
        like: (B, C, *spatial).
    """
    values = coefficients.to(dtype=like.dtype).to(like.device)[t.to(like.device)]
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class GaussianDiffusion:
    """Coefficients of the forward process, precomputed once in float64.

    Attributes (all float64 (T,) on the CPU unless stated):
        num_timesteps: T (int).
        alphas_cumprod: abar_t.
        betas: 1 - abar_t / abar_{t-1}, with abar_{-1} = 1.
        sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: the q_sample weights (eq. 4).
    """

    def __init__(self, *, alphas_cumprod: torch.Tensor):
        """
        Args:
            alphas_cumprod: (T,), T >= 2, strictly decreasing in (0, 1); any float dtype, kept as float64.
        """
        abar = validate_alphas_cumprod(alphas_cumprod)
        self.num_timesteps = abar.numel()
        self.alphas_cumprod = abar
        self.betas = betas_from_alphas_cumprod(abar)
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()

    @classmethod
    def from_schedule(cls, name: str, num_timesteps: int) -> "GaussianDiffusion":
        """Diffusion on the named schedule (see :func:`make_alphas_cumprod`) with T = ``num_timesteps``."""
        return cls(alphas_cumprod=make_alphas_cumprod(name, num_timesteps))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4) with the given noise.

        Args:
            x0: (B, C, *spatial) float, the clean sample (here a mask in [-1, 1]).
            t: long (B,) in [0, T-1].
            noise: eps, same shape as x0, standard normal.

        Returns:
            x_t: same shape, dtype and device as x0.
        """
        return (
            _broadcast(self.sqrt_alphas_cumprod, t, x0) * x0
            + _broadcast(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )
