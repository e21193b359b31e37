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
    "call",
    [
        lambda: make_alphas_cumprod("quadratic", 5),
        lambda: make_alphas_cumprod("linear", 1),
        lambda: make_alphas_cumprod("cosine", 1),
        lambda: linear_alphas_cumprod(1002),
        lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9, 0.95, 0.5])),
        lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([1.0, 0.5])),
        lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9, 0.0])),
        lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([[0.9, 0.5]])),
        lambda: GaussianDiffusion(alphas_cumprod=torch.tensor([0.9])),
    ],
)
def test_invalid_schedules_raise_value_error(call):
    with pytest.raises(ValueError):
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


def test_predict_x0_from_eps_inverts_predict_eps_from_x0(diffusion):
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    x0 = torch.rand(5, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    t = torch.arange(5)
    eps = diffusion.predict_eps_from_x0(x_t, t, x0)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(x_t, t, eps), x0, rtol=0, atol=1e-9)
    # and eps is the noise that q_sample would need to reach x_t from x0
    torch.testing.assert_close(diffusion.q_sample(x0, t, eps), x_t, rtol=0, atol=1e-9)


def test_posterior_mean_and_variance_match_ho_et_al_eq7(diffusion):
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 2, 3, generator=generator, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4])
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
    assert variance.shape == log_variance.shape == (5, 1, 1)

    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1001))[[0, 250, 500, 750, 1000]]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1 - abar / abar_prev
    for i in range(5):
        coef_x0 = math.sqrt(abar_prev[i]) * beta[i] / (1 - abar[i])
        coef_xt = math.sqrt(1 - beta[i]) * (1 - abar_prev[i]) / (1 - abar[i])
        torch.testing.assert_close(mean[i], coef_x0 * x0[i] + coef_xt * x_t[i], rtol=0, atol=1e-10)
        assert variance[i].item() == pytest.approx(beta[i] * (1 - abar_prev[i]) / (1 - abar[i]), rel=1e-9, abs=0)
    # t = 0: abar_prev = 1, so the posterior is a point mass at x0; the log variance is clipped to t = 1's.
    torch.testing.assert_close(mean[0], x0[0], rtol=0, atol=1e-12)
    assert variance[0].item() == 0.0
    assert log_variance[0].item() == pytest.approx(math.log(variance[1].item()), rel=1e-12)
    torch.testing.assert_close(log_variance[1:], variance[1:].log())


def test_q_sample_casts_coefficients_to_the_input_dtype(diffusion):
    x0 = torch.ones(2, 1, 3, dtype=torch.bfloat16)
    x_t = diffusion.q_sample(x0, torch.tensor([0, 4]), torch.zeros_like(x0))
    assert x_t.dtype == torch.bfloat16
    assert x_t[0, 0, 0].item() == pytest.approx(math.sqrt(0.9999), abs=1e-2)
    assert x_t[1, 0, 0].item() == pytest.approx(math.sqrt(diffusion.alphas_cumprod[4].item()), rel=1e-2)
