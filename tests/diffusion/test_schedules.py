"""Noise schedules and the forward process (GaussianDiffusion) against closed forms computed here independently."""

import math

import numpy as np
import pytest
import torch

from nnunetv2_diffusion.diffusion import (
    GaussianDiffusion,
    betas_from_alphas_cumprod,
    cosine_alphas_cumprod,
    linear_alphas_cumprod,
    make_alphas_cumprod,
)


def test_linear_schedule_keeps_the_paper_indices_of_the_1001_step_schedule():
    expected = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1001))[[0, 250, 500, 750, 1000]]
    abar = linear_alphas_cumprod(5)
    assert abar.dtype == torch.float64
    np.testing.assert_allclose(abar.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(abar.numpy(), [0.9999, 0.5218, 0.0780, 0.0033, 0.00004], rtol=0.02)


@pytest.mark.parametrize("num_timesteps", [2, 4, 7, 30])
def test_linear_schedule_rounds_evenly_spaced_positions(num_timesteps):
    indices = np.round(np.linspace(0, 1000, num_timesteps)).astype(int)  # e.g. T = 4: 0, 333, 667, 1000
    expected = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1001))[indices]
    np.testing.assert_allclose(linear_alphas_cumprod(num_timesteps).numpy(), expected, rtol=1e-12)


def test_linear_schedule_with_all_base_steps_is_the_base_schedule():
    expected = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1001))
    np.testing.assert_allclose(linear_alphas_cumprod(1001).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("num_timesteps", [2, 5, 17, 1000])
def test_betas_round_trip_and_schedule_is_strictly_decreasing_in_unit_interval(name, num_timesteps):
    abar = make_alphas_cumprod(name, num_timesteps)
    assert abar.shape == (num_timesteps,)
    assert bool((abar > 0).all()) and bool((abar < 1).all())
    assert bool((abar[1:] < abar[:-1]).all())
    betas = betas_from_alphas_cumprod(abar)
    torch.testing.assert_close(torch.cumprod(1.0 - betas, dim=0), abar, rtol=1e-12, atol=0)


def test_cosine_schedule_matches_nichol_dhariwal_closed_form():
    num_timesteps, s = 10, 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    # Before the last step no beta reaches the 0.999 clip, so abar_k = f((k+1)/T) / f(0) exactly.
    expected = [f((k + 1) / num_timesteps) / f(0) for k in range(num_timesteps - 1)]
    abar = cosine_alphas_cumprod(num_timesteps)
    np.testing.assert_allclose(abar[:-1].numpy(), expected, rtol=1e-12)
    # The last beta is clipped: abar_{T-1} = abar_{T-2} * (1 - 0.999) instead of f(1) / f(0) ~ 0.
    np.testing.assert_allclose(abar[-1].item(), expected[-1] * (1 - 0.999), rtol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_alphas_cumprod("quadratic", 5), "unknown schedule"),
        (lambda: make_alphas_cumprod("linear", 1), "must be >= 2"),
        (lambda: make_alphas_cumprod("cosine", 1), "must be >= 2"),
        (lambda: linear_alphas_cumprod(1002), "must be <= num_base_timesteps"),
        (lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9, 0.95, 0.5])), "strictly decreasing"),
        (lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([1.0, 0.5])), r"lie in \(0, 1\)"),
        (lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9, 0.0])), r"lie in \(0, 1\)"),
        (lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([[0.9, 0.5]])), "1-D with at least 2"),
        (lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9])), "1-D with at least 2"),
    ],
)
def test_invalid_schedules_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_unknown_schedule_error_names_the_valid_ones():
    with pytest.raises(ValueError, match="linear, cosine"):
        make_alphas_cumprod("quadratic", 5)


@pytest.fixture
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 5)


def test_q_sample_is_exact_for_fixed_noise_per_sample_timestep(diffusion):
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1001))[[0, 250, 500, 750, 1000]]
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 2, 3, 4, generator=generator) * 2 - 1
    noise = torch.randn(5, 2, 3, 4, generator=generator)
    t = torch.tensor([4, 0, 3, 1, 2])
    x_t = diffusion.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
    for i, step in enumerate(t.tolist()):
        expected = math.sqrt(abar[step]) * x0[i].double() + math.sqrt(1 - abar[step]) * noise[i].double()
        torch.testing.assert_close(x_t[i].double(), expected, rtol=0, atol=1e-6)


def test_q_sample_mean_and_variance_on_a_large_draw(diffusion):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.full((1, 1, 200_000), 0.7, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, torch.tensor([1]), torch.randn(x0.shape, generator=generator, dtype=torch.float64))
    abar = diffusion.alphas_cumprod[1].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_q_sample_casts_coefficients_to_the_input_dtype(diffusion):
    x0 = torch.ones(2, 1, 3, dtype=torch.bfloat16)
    x_t = diffusion.q_sample(x0, torch.tensor([0, 4]), torch.zeros_like(x0))
    assert x_t.dtype == torch.bfloat16
    assert x_t[0, 0, 0].item() == pytest.approx(math.sqrt(0.9999), abs=1e-2)
    assert x_t[1, 0, 0].item() == pytest.approx(math.sqrt(diffusion.alphas_cumprod[4].item()), rel=1e-2)
