"""DDPM / DDIM samplers: full sampling loops against diffusers' schedulers, plus the properties diffusers can't check.

diffusers configuration that reproduces our samplers (x0-parameterisation, no clipping, trailing timesteps):
DDPMScheduler(trained_betas=our betas, prediction_type="sample", clip_sample=False, variance_type="fixed_small",
timestep_spacing="trailing") and DDIMScheduler(same, set_alpha_to_one=True, steps_offset=0). Both draw their noise
with ``randn_tensor(shape, generator, device, dtype)``, which for a CPU generator is one ``torch.randn`` call, as
ours is, so one seed gives the same noise. diffusers keeps the schedule in float32 (1 - abar_0 = 1e-4 then carries a
relative error of ~3e-4), which explains differences of a few 1e-6 against our float64 coefficients; hence 1e-5.

What diffusers cannot match: DDIMScheduler.step takes the previous timestep as ``t - T // n`` instead of the next
entry of its own ``timesteps``. With trailing spacing the two agree only when n divides T; for T = 10, n = 3 its
timesteps are [9, 6, 2] but it steps 6 -> 3 and 2 -> -1. So DDIM is compared to diffusers for n dividing T, and
for the other n it is checked against our DDPM (DDIM with eta = 1 is the DDPM posterior step), which diffusers'
DDPMScheduler, whose ``previous_timestep`` does use the next entry, checks for every n. Separately, for some (T, n),
e.g. (15, 13), diffusers' trailing timesteps get one extra entry, -1, from numpy's float arange; ours stop at n.
"""

import diffusers  # the reference implementation; a declared test dependency, so a missing one fails loudly
import pytest
import torch

from nnunetv2_diffusion.diffusion import (
    DDIMSampler,
    DDPMSampler,
    betas_from_alphas_cumprod,
    make_alphas_cumprod,
    make_sampler,
)

SHAPE = (2, 3, 4, 5)


def dummy_x0_model(x_t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic 'network': tanh of a linear map over channels, so x0 in (-1, 1) depends on x_t."""
    weight = torch.tensor([[0.8, -0.3, 0.5], [0.2, 0.9, -0.4], [-0.6, 0.1, 0.7]])
    bias = torch.tensor([0.1, -0.2, 0.05]).reshape(1, 3, 1, 1)
    return torch.tanh(torch.einsum("oc,bchw->bohw", weight, x_t) + bias)


def initial_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234))


def run_loop(sampler, num_inference_steps: int, seed: int) -> list[torch.Tensor]:
    """Samples from x_T ~ N(0, I) and returns x after every step."""
    sampler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    x, trajectory = initial_noise(), []
    for t in sampler.timesteps.tolist():
        x = sampler.step(dummy_x0_model(x), t, x, generator=generator)
        trajectory.append(x)
    return trajectory


def run_diffusers_loop(scheduler, num_inference_steps: int, seed: int, **step_kwargs) -> list[torch.Tensor]:
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    x, trajectory = initial_noise(), []
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_x0_model(x), t, x, generator=generator, **step_kwargs).prev_sample
        trajectory.append(x)
    return trajectory


def diffusers_config(alphas_cumprod: torch.Tensor) -> dict:
    return dict(
        num_train_timesteps=alphas_cumprod.numel(),
        trained_betas=betas_from_alphas_cumprod(alphas_cumprod).numpy(),
        prediction_type="sample",
        clip_sample=False,
        timestep_spacing="trailing",
    )


def assert_trajectories_equal(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for step, (x_ours, x_theirs) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(x_ours, x_theirs, rtol=0, atol=1e-5, msg=lambda m, s=step: f"step {s}: {m}")


@pytest.mark.parametrize(("num_timesteps", "num_inference_steps"), [(5, 5), (5, 2), (5, 1), (10, 10), (10, 3), (10, 1)])
def test_ddpm_loop_matches_diffusers(num_timesteps, num_inference_steps):
    abar = make_alphas_cumprod("linear", num_timesteps)
    theirs = diffusers.DDPMScheduler(**diffusers_config(abar), variance_type="fixed_small")
    assert_trajectories_equal(
        run_loop(DDPMSampler(alphas_cumprod=abar), num_inference_steps, seed=7),
        run_diffusers_loop(theirs, num_inference_steps, seed=7),
    )


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    ("num_timesteps", "num_inference_steps"), [(5, 5), (5, 1), (10, 10), (10, 5), (10, 2), (10, 1)]
)
def test_ddim_loop_matches_diffusers_when_steps_divide_timesteps(num_timesteps, num_inference_steps, eta):
    abar = make_alphas_cumprod("linear", num_timesteps)
    theirs = diffusers.DDIMScheduler(**diffusers_config(abar), set_alpha_to_one=True, steps_offset=0)
    assert_trajectories_equal(
        run_loop(DDIMSampler(alphas_cumprod=abar, eta=eta), num_inference_steps, seed=7),
        run_diffusers_loop(theirs, num_inference_steps, seed=7, eta=eta),
    )


@pytest.mark.parametrize(("num_timesteps", "num_inference_steps"), [(5, 2), (10, 3), (10, 4)])
def test_ddim_with_eta_one_is_the_ddpm_step_on_uneven_spacing(num_timesteps, num_inference_steps):
    abar = make_alphas_cumprod("cosine", num_timesteps)
    assert_trajectories_equal(
        run_loop(DDIMSampler(alphas_cumprod=abar, eta=1.0), num_inference_steps, seed=3),
        run_loop(DDPMSampler(alphas_cumprod=abar), num_inference_steps, seed=3),
    )


@pytest.mark.parametrize("num_timesteps", [5, 10, 15, 1001])
def test_timesteps_are_diffusers_trailing_spacing(num_timesteps):
    """Equal to diffusers for every n, except that diffusers sometimes appends a -1 (see set_timesteps)."""
    ours = DDPMSampler(alphas_cumprod=make_alphas_cumprod("linear", num_timesteps))
    theirs = diffusers.DDIMScheduler(num_train_timesteps=num_timesteps, timestep_spacing="trailing")
    for n in range(1, num_timesteps + 1):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        expected = theirs.timesteps.tolist()
        if len(expected) == n + 1 and expected[-1] == -1:
            expected = expected[:-1]
        assert ours.timesteps.dtype == torch.int64
        assert ours.timesteps.tolist() == expected, n
        assert len(set(expected)) == n and expected[0] == num_timesteps - 1 and expected[-1] >= 0, n


def test_timesteps_examples():
    sampler = DDPMSampler(alphas_cumprod=make_alphas_cumprod("linear", 10))
    assert sampler.timesteps.tolist() == list(range(9, -1, -1))
    sampler.set_timesteps(3)
    assert sampler.timesteps.tolist() == [9, 6, 2]
    sampler.set_timesteps(1)
    assert sampler.timesteps.tolist() == [9]
    sampler = DDPMSampler(alphas_cumprod=make_alphas_cumprod("linear", 15))
    sampler.set_timesteps(13)  # numpy's arange yields 14 values here; diffusers then ends with -1
    assert sampler.timesteps.tolist() == [14, 13, 12, 11, 9, 8, 7, 6, 5, 4, 2, 1, 0]


@pytest.mark.parametrize("num_inference_steps", [0, 6])
def test_set_timesteps_out_of_range_raises_and_names_both_numbers(num_inference_steps):
    sampler = DDPMSampler(alphas_cumprod=make_alphas_cumprod("linear", 5))
    with pytest.raises(ValueError, match=rf"\b5\b.*\b{num_inference_steps}\b"):
        sampler.set_timesteps(num_inference_steps)


def test_step_rejects_a_timestep_outside_the_inference_timesteps():
    sampler = DDIMSampler(alphas_cumprod=make_alphas_cumprod("linear", 10))
    sampler.set_timesteps(3)
    x = initial_noise()
    with pytest.raises(ValueError, match="timestep 5"):
        sampler.step(x, 5, x)


@pytest.mark.parametrize("sampler", [DDPMSampler, lambda **kw: DDIMSampler(**kw, eta=0.5)])
@pytest.mark.parametrize("num_inference_steps", [5, 2, 1])
def test_last_step_returns_x0_pred_exactly(sampler, num_inference_steps):
    sampler = sampler(alphas_cumprod=make_alphas_cumprod("linear", 5))
    sampler.set_timesteps(num_inference_steps)
    x = initial_noise()
    x0_pred = dummy_x0_model(x)
    last = sampler.timesteps[-1]
    assert torch.equal(sampler.step(x0_pred, last, x, generator=torch.Generator().manual_seed(0)), x0_pred)


def test_ddim_eta_zero_is_deterministic_and_draws_no_noise():
    sampler = DDIMSampler(alphas_cumprod=make_alphas_cumprod("linear", 5))
    assert_trajectories_equal(run_loop(sampler, 5, seed=0), run_loop(sampler, 5, seed=1))
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    x = initial_noise()
    sampler.step(dummy_x0_model(x), 4, x, generator=generator)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("sampler", [DDPMSampler, lambda **kw: DDIMSampler(**kw, eta=1.0)])
def test_stochastic_samplers_depend_on_the_seed(sampler):
    sampler = sampler(alphas_cumprod=make_alphas_cumprod("linear", 5))
    first, second = run_loop(sampler, 5, seed=0), run_loop(sampler, 5, seed=1)
    assert not torch.allclose(first[-2], second[-2])
    assert_trajectories_equal(run_loop(sampler, 5, seed=0), first)


@pytest.mark.parametrize("sampler", [DDPMSampler, lambda **kw: DDIMSampler(**kw, eta=0.3)])
def test_given_noise_replaces_the_generator_draw(sampler):
    sampler = sampler(alphas_cumprod=make_alphas_cumprod("linear", 5))
    x = initial_noise()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    with_generator = sampler.step(dummy_x0_model(x), 3, x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampler.step(dummy_x0_model(x), 3, x, noise=noise), with_generator, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        sampler.step(dummy_x0_model(x), 3, x, noise=noise[:1])


def test_ddpm_step_matches_the_posterior_closed_form():
    abar = make_alphas_cumprod("linear", 10)
    sampler = DDPMSampler(alphas_cumprod=abar)
    sampler.set_timesteps(3)  # 9 -> 6 -> 2
    x = initial_noise().double()
    x0 = dummy_x0_model(x.float()).double()
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a_t, a_prev = abar[6].item(), abar[2].item()
    beta = 1 - a_t / a_prev
    mean = beta * a_prev**0.5 / (1 - a_t) * x0 + (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t) * x
    expected = mean + (beta * (1 - a_prev) / (1 - a_t)) ** 0.5 * z
    torch.testing.assert_close(sampler.step(x0, 6, x, noise=z), expected, rtol=0, atol=1e-12)


def test_make_sampler():
    abar = make_alphas_cumprod("linear", 5)
    assert isinstance(make_sampler("ddpm", alphas_cumprod=abar), DDPMSampler)
    ddim = make_sampler("ddim", alphas_cumprod=abar, eta=0.5)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.5
    with pytest.raises(ValueError, match="ddpm, ddim"):
        make_sampler("euler", alphas_cumprod=abar)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddpm", alphas_cumprod=abar, eta=0.5)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            make_sampler("ddim", alphas_cumprod=abar, eta=eta)
