"""Reverse-process samplers for an x0-predicting model: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

Both follow the diffusers scheduler API shape: ``set_timesteps(n)`` picks n of the T training timesteps, then
``step(x0_pred, t, x_t)`` is called for every entry of ``timesteps`` in order and returns the sample at the next
entry (x_0 after the last one). Coefficients are computed per step in float64 from the training schedule.
"""

import math

import numpy as np
import torch

from nnunetv2_diffusion.diffusion.schedules import validate_alphas_cumprod

SAMPLERS = ("ddpm", "ddim")


def check_sampling_options(sampler: str | None = None, steps=None, eta: float | None = None,
                           num_timesteps: int | None = None) -> None:
    """The one check of sampling options, used by the samplers, the stored settings and the predictor; None means
    "not given". ``steps`` must be an integer in [1, num_timesteps], ``eta`` in [0, 1] and 0 with DDPM, which has no
    eta (eta = 0 is DDIM's deterministic limit, eta = 1 its DDPM-like one).

    Raises:
        ValueError: naming the option and its valid values.
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer (got {steps!r})")
        if num_timesteps is not None and steps > num_timesteps:
            raise ValueError(f"steps={steps} exceeds the {num_timesteps} timesteps of the training schedule; "
                             f"choose steps in [1, {num_timesteps}]")
    if eta is not None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (got {eta})")
        if sampler == "ddpm" and eta != 0:
            raise ValueError(f"eta applies to the ddim sampler only (got eta={eta} with ddpm)")


class _Sampler:
    """Inference timesteps and noise drawing shared by :class:`DDPMSampler` and :class:`DDIMSampler`."""

    def __init__(self, *, alphas_cumprod: torch.Tensor):
        """
        Args:
            alphas_cumprod: the training schedule, (T,) strictly decreasing in (0, 1); kept as float64.
        """
        self.alphas_cumprod = validate_alphas_cumprod(alphas_cumprod)
        self.num_train_timesteps = self.alphas_cumprod.numel()
        self.set_timesteps(self.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Chooses the inference timesteps with diffusers' "trailing" spacing.

        ``self.timesteps`` becomes round(arange(T, 0, -T / n)) - 1 as numpy computes it (ties to even), so the
        values equal diffusers' bit for bit: long (n,), strictly descending, always starting at T - 1; n = T gives
        T-1, ..., 0. Only the first n values are kept: for some (T, n), e.g. (15, 13), float rounding makes
        numpy's arange return n + 1 values, and diffusers then ends its timesteps with -1.

        Raises:
            ValueError: if ``num_inference_steps`` is not in [1, T].
        """
        num_train = self.num_train_timesteps
        if not 1 <= num_inference_steps <= num_train:
            raise ValueError(
                f"num_inference_steps must be in [1, {num_train}] (the training timesteps), got {num_inference_steps}"
            )
        trailing = np.arange(num_train, 0, -num_train / num_inference_steps)[:num_inference_steps]
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(np.round(trailing).astype(np.int64) - 1)
        steps = self.timesteps.tolist()
        self._previous_timestep = dict(zip(steps, steps[1:] + [-1], strict=True))

    def _alphas_cumprod_pair(self, timestep) -> tuple[float, float]:
        """(abar_t, abar_prev) for an entry of ``self.timesteps``; abar_prev = 1 after the last entry."""
        t = int(timestep)
        if t not in self._previous_timestep:
            raise ValueError(f"timestep {t} is not one of the inference timesteps {self.timesteps.tolist()}")
        previous = self._previous_timestep[t]
        abar_prev = 1.0 if previous < 0 else float(self.alphas_cumprod[previous])
        return float(self.alphas_cumprod[t]), abar_prev

    @staticmethod
    def _noise_like(sample: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None):
        """``noise`` if given, else a standard normal draw shaped like ``sample``, on its device and dtype.

        The draw happens on the generator's device (then moves), as diffusers' ``randn_tensor`` does, so a seeded
        CPU generator gives the same numbers here and in diffusers.
        """
        if noise is not None:
            if noise.shape != sample.shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} differs from sample shape {tuple(sample.shape)}")
            return noise.to(device=sample.device, dtype=sample.dtype)
        device = generator.device if generator is not None else sample.device
        return torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype).to(sample.device)


class DDPMSampler(_Sampler):
    """Ancestral sampling from the DDPM posterior q(x_prev | x_t, x0_pred), on any subset of timesteps."""

    def step(
        self,
        x0_pred: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_prev, where prev is the next entry of ``self.timesteps``.

        Args:
            x0_pred: (B, C, *spatial) float, the model's estimate of x_0 (here in [-1, 1]).
            timestep: t, an entry of ``self.timesteps`` (int or 0-d tensor).
            sample: x_t, same shape as x0_pred.
            generator: seeds the noise draw when ``noise`` is None.
            noise: z, standard normal, same shape as sample; unused at the last step.

        Returns:
            x_prev: same shape as sample; exactly ``x0_pred`` after the last timestep.
        """
        # Notation (code -> Ho et al. 2020, with t-1 read as the next inference timestep "prev"):
        #   abar_t, abar_prev -> alpha-bar_t, alpha-bar_{t-1} (abar_prev = 1 after the last timestep)
        #   beta_t            -> beta_t of the jump actually taken, 1 - abar_t / abar_prev
        #   x0_pred, sample   -> x_0 (predicted), x_t
        #   mean, variance    -> mu~_t(x_t, x_0), beta~_t
        # 1. Cumulative alphas at both ends of the jump.
        abar_t, abar_prev = self._alphas_cumprod_pair(timestep)
        beta_t = 1.0 - abar_t / abar_prev

        # 2. Posterior mean mu~_t, eq. 7.
        coef_x0 = math.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
        coef_xt = math.sqrt(1.0 - beta_t) * (1.0 - abar_prev) / (1.0 - abar_t)
        prev_sample = coef_x0 * x0_pred + coef_xt * sample

        # 3. Posterior variance beta~_t, eq. 7; it is exactly 0 after the last timestep (abar_prev = 1).
        variance = beta_t * (1.0 - abar_prev) / (1.0 - abar_t)

        # 4. x_prev ~ q(x_prev | x_t, x_0) = N(mu~_t, beta~_t I), eq. 6.
        if variance > 0:
            prev_sample = prev_sample + math.sqrt(variance) * self._noise_like(sample, generator, noise)
        return prev_sample


class DDIMSampler(_Sampler):
    """DDIM sampling (Song et al. 2021) from an x0 prediction; eta = 0 is deterministic, eta = 1 matches DDPM."""

    def __init__(self, *, alphas_cumprod: torch.Tensor, eta: float = 0.0):
        """
        Args:
            alphas_cumprod: the training schedule, (T,) strictly decreasing in (0, 1); kept as float64.
            eta: noise scale in [0, 1]. Above 1, sigma^2 exceeds 1 - abar_prev at some steps and eq. 12 has no
                real solution.
        """
        check_sampling_options("ddim", eta=eta)
        super().__init__(alphas_cumprod=alphas_cumprod)
        self.eta = eta

    def step(
        self,
        x0_pred: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_prev, where prev is the next entry of ``self.timesteps``.

        Args:
            x0_pred: (B, C, *spatial) float, the model's estimate of x_0 (here in [-1, 1]).
            timestep: t, an entry of ``self.timesteps`` (int or 0-d tensor).
            sample: x_t, same shape as x0_pred.
            generator: seeds the noise draw when ``noise`` is None; no draw happens when eta = 0.
            noise: z, standard normal, same shape as sample; unused when sigma = 0 (eta = 0 or the last step).

        Returns:
            x_prev: same shape as sample; exactly ``x0_pred`` after the last timestep.
        """
        # Notation (code -> Song et al. 2021, with t-1 read as the next inference timestep "prev"):
        #   abar_t, abar_prev -> alpha_t, alpha_{t-1} (cumulative; abar_prev = 1 after the last timestep)
        #   x0_pred           -> f_theta(x_t), the predicted x_0
        #   eps_hat           -> eps_theta(x_t), the noise implied by x_t and x0_pred
        #   sigma             -> sigma_t(eta), eq. 16
        # 1. Cumulative alphas at both ends of the jump.
        abar_t, abar_prev = self._alphas_cumprod_pair(timestep)

        # 2. Noise implied by the x_0 estimate, eq. 12's "predicted x_0" term solved for eps.
        eps_hat = (sample - math.sqrt(abar_t) * x0_pred) / math.sqrt(1.0 - abar_t)

        # 3. sigma_t(eta), eq. 16; 0 when eta = 0 or after the last timestep.
        sigma = self.eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)

        # 4. Eq. 12: predicted x_0, plus the direction pointing to x_t, plus fresh noise. For eta <= 1 the
        #    direction's weight is real; max() only absorbs rounding at eta = 1.
        direction_weight = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
        prev_sample = math.sqrt(abar_prev) * x0_pred + direction_weight * eps_hat
        if sigma > 0:
            prev_sample = prev_sample + sigma * self._noise_like(sample, generator, noise)
        return prev_sample


def make_sampler(name: str, *, alphas_cumprod: torch.Tensor, eta: float = 0.0) -> DDPMSampler | DDIMSampler:
    """The named sampler (one of :data:`SAMPLERS`) on the training schedule ``alphas_cumprod``.

    Raises:
        ValueError: see :func:`check_sampling_options`.
    """
    check_sampling_options(name, eta=eta)
    if name == "ddpm":
        return DDPMSampler(alphas_cumprod=alphas_cumprod)
    return DDIMSampler(alphas_cumprod=alphas_cumprod, eta=eta)
