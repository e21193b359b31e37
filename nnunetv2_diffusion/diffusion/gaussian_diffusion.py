"""The forward process q(x_t | x_0) of a discrete Gaussian diffusion and its posterior q(x_{t-1} | x_t, x_0).

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
    """Coefficients of the forward process and its posterior, precomputed once in float64.

    Attributes (all float64 (T,) on the CPU unless stated):
        num_timesteps: T (int).
        alphas_cumprod: abar_t; alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1.
        betas: 1 - abar_t / abar_{t-1}.
        sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: the q_sample weights (eq. 4).
        sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod: sqrt(1 / abar_t), sqrt(1 / abar_t - 1).
        posterior_variance: beta~_t (eq. 7), 0 at t = 0.
        posterior_log_variance_clipped: log beta~_t with the t = 0 entry set to log beta~_1, so it stays finite.
        posterior_mean_coef1, posterior_mean_coef2: the x_0 and x_t weights of mu~_t (eq. 7).
    """

    def __init__(self, *, alphas_cumprod: torch.Tensor):
        """
        Args:
            alphas_cumprod: (T,), T >= 2, strictly decreasing in (0, 1); any float dtype, kept as float64.
        """
        abar = validate_alphas_cumprod(alphas_cumprod)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        self.num_timesteps = abar.numel()
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.betas = betas_from_alphas_cumprod(abar)

        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()

        self.posterior_variance = self.betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = self.betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)

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

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The eps that takes ``x0`` to ``x_t`` at step t: (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t).

        Args:
            x_t, x0: (B, C, *spatial) float.
            t: long (B,) in [0, T-1].

        Returns:
            eps: same shape, dtype and device as x_t.
        """
        numerator = _broadcast(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0
        return numerator / _broadcast(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`predict_eps_from_x0`: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).

        Args:
            x_t, eps: (B, C, *spatial) float.
            t: long (B,) in [0, T-1].

        Returns:
            x0: same shape, dtype and device as x_t.
        """
        return (
            _broadcast(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _broadcast(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and variance of the posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (eq. 6-7).

        At t = 0 the previous abar is 1: the mean is x_0 and the variance 0.

        Args:
            x0, x_t: (B, C, *spatial) float.
            t: long (B,) in [0, T-1].

        Returns:
            mean: same shape, dtype and device as x_t.
            variance: (B, 1, ..., 1), beta~_t.
            log_variance: (B, 1, ..., 1), log beta~_t, clipped at t = 0 to log beta~_1 (finite).
        """
        mean = _broadcast(self.posterior_mean_coef1, t, x_t) * x0 + _broadcast(self.posterior_mean_coef2, t, x_t) * x_t
        variance = _broadcast(self.posterior_variance, t, x_t)
        log_variance = _broadcast(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance
