"""Timestep embedding: tau in (0, 1] -> sinusoidal features -> MLP (Ho et al. 2020, improved-diffusion)."""

import math

import torch
from torch import nn


def sinusoidal_embedding(tau: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """tau: (B,) float in (0, 1], scaled by 1000 so the frequencies match integer-timestep conventions.

    Returns (B, dim) float32: [cos(1000 tau w_k), sin(1000 tau w_k)] with w_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
    angles = 1000.0 * tau.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimestepEmbedding(nn.Module):
    """tau (B,) in (0, 1] -> embedding (B, embed_dim) after sinusoid -> Linear -> SiLU -> Linear -> SiLU."""

    def __init__(self, *, embed_dim: int = 256, frequency_dim: int = 128):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim), nn.SiLU()
        )

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(tau, self.frequency_dim))
