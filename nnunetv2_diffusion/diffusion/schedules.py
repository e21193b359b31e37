"""Noise schedules as cumulative alphas: abar_t = prod_{s <= t} (1 - beta_s) for t = 0..T-1, in float64.

A schedule is described by abar alone; betas follow from it (:func:`betas_from_alphas_cumprod`). Everything
downstream (:class:`GaussianDiffusion`, the samplers) takes ``alphas_cumprod`` and checks it with
:func:`validate_alphas_cumprod`.
"""

import math

import torch

SCHEDULES = ("linear", "cosine")


def timestep_to_tau(t, num_timesteps: int):
    """Timestep t in [0, T-1] (int or tensor) -> the network's time input tau = (t + 1) / T in (0, 1] (float, or a
    float32 tensor of t's shape). Shifted by one so that t = 0, the least noisy step, still differs from "no time"."""
    if isinstance(t, torch.Tensor):
        return (t.float() + 1) / num_timesteps
    return (t + 1) / num_timesteps


def _check_num_timesteps(num_timesteps: int) -> None:
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")


def linear_alphas_cumprod(
    num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02, num_base_timesteps: int = 1001
) -> torch.Tensor:
    """The paper's schedule: a long linear-beta schedule kept at ``num_timesteps`` evenly spaced indices.

    Betas rise linearly from ``beta_start`` to ``beta_end`` over ``num_base_timesteps`` steps; the cumulative
    alphas are kept at indices ``round(i * (N - 1) / (T - 1))``, i = 0..T-1 (ties to even), so the first and last
    base steps are always kept. T = 5 keeps indices 0, 250, 500, 750, 1000, i.e.
    abar ~ [0.9999, 0.5218, 0.0780, 0.0033, 0.00004] (Fu et al. 2023; ImgX-DiffSeg's downsampled schedule).

    Args:
        num_timesteps: T, in [2, num_base_timesteps].
        beta_start, beta_end: first and last beta of the base schedule.
        num_base_timesteps: N, length of the base schedule.

    Returns:
        abar: float64 (T,), strictly decreasing in (0, 1).
    """
    _check_num_timesteps(num_timesteps)
    if num_timesteps > num_base_timesteps:
        raise ValueError(f"num_timesteps ({num_timesteps}) must be <= num_base_timesteps ({num_base_timesteps})")
    betas = torch.linspace(beta_start, beta_end, num_base_timesteps, dtype=torch.float64)
    base_alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    positions = torch.arange(num_timesteps, dtype=torch.float64) * (num_base_timesteps - 1) / (num_timesteps - 1)
    return base_alphas_cumprod[torch.round(positions).long()]


def cosine_alphas_cumprod(num_timesteps: int, *, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal 2021 (eq. 17), betas clipped at 0.999.

    With f(u) = cos(((u + s) / (1 + s)) * pi / 2)^2 and u = k / T, beta_k = min(1 - f((k+1)/T) / f(k/T), 0.999)
    and abar_k = prod_{j <= k} (1 - beta_j) for k = 0..T-1 (abar_k is the paper's abar at step k + 1).

    Args:
        num_timesteps: T >= 2.
        s: small offset that keeps beta_0 from being vanishingly small.

    Returns:
        abar: float64 (T,), strictly decreasing in (0, 1).
    """
    _check_num_timesteps(num_timesteps)
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def make_alphas_cumprod(name: str, num_timesteps: int) -> torch.Tensor:
    """The named schedule (one of :data:`SCHEDULES`) with its default parameters; float64 (T,)."""
    if name == "linear":
        return linear_alphas_cumprod(num_timesteps)
    if name == "cosine":
        return cosine_alphas_cumprod(num_timesteps)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Per-step betas of a schedule: beta_0 = 1 - abar_0, beta_t = 1 - abar_t / abar_{t-1}.

    Args:
        alphas_cumprod: (T,) in (0, 1].

    Returns:
        betas: (T,), same dtype; ``cumprod(1 - betas)`` gives back ``alphas_cumprod``.
    """
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / previous


def validate_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """Checks a schedule and returns it as a new float64 CPU tensor.

    Args:
        alphas_cumprod: tensor, array or sequence (T,) with T >= 2, strictly decreasing, every value in (0, 1).
            1 is excluded because 1 - abar_t appears in denominators (eps from x0, posterior coefficients).

    Raises:
        ValueError: if any condition fails.
    """
    abar = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float64).clone()
    if abar.ndim != 1 or abar.numel() < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(abar.shape)}")
    if not bool(((abar > 0) & (abar < 1)).all()):
        raise ValueError("alphas_cumprod values must lie in (0, 1)")
    if not bool((abar[1:] < abar[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing")
    return abar
