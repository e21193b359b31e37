"""Uniform and importance (loss-aware) timestep samplers: range, warm-up, preference and unbiased weights."""

import pytest
import torch

from nnunetv2_diffusion.diffusion import (
    ImportanceTimestepSampler,
    UniformTimestepSampler,
    make_timestep_sampler,
)


def feed(sampler: ImportanceTimestepSampler, loss_per_t: list[float], visits: int) -> None:
    """Every timestep t seen ``visits`` times with loss ``loss_per_t[t]``, in shuffled batches of 3."""
    t = torch.arange(len(loss_per_t)).repeat(visits)
    t = t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(0))]
    losses = torch.tensor(loss_per_t)[t]
    for start in range(0, t.numel(), 3):
        sampler.update(t[start : start + 3], losses[start : start + 3])


def test_uniform_sampler_covers_the_range_with_unit_weights():
    sampler = UniformTimestepSampler(num_timesteps=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        t, weights = sampler.sample(400, "cpu")
    assert t.dtype == torch.int64 and t.shape == (400,)
    assert set(t.tolist()) == {0, 1, 2, 3}
    assert weights.dtype == torch.float32 and torch.equal(weights, torch.ones(400))
    sampler.update(t, torch.rand(400))


def test_importance_sampler_is_uniform_until_every_timestep_was_seen_history_times():
    sampler = ImportanceTimestepSampler(num_timesteps=4, history=3)
    feed(sampler, [1.0, 5.0, 1.0, 1.0], visits=2)
    sampler.update(torch.tensor([1]), torch.tensor([5.0]))  # t = 1 has its 3 visits, the others only 2
    torch.testing.assert_close(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    t, weights = sampler.sample(16, "cpu")
    assert torch.equal(weights, torch.ones(16))
    assert t.min() >= 0 and t.max() <= 3


def test_importance_sampler_prefers_the_timestep_with_large_losses():
    sampler = ImportanceTimestepSampler(num_timesteps=4, history=3)
    feed(sampler, [1.0, 1.0, 8.0, 1.0], visits=3)
    p = sampler.probabilities()
    # constant losses: sqrt(EMA(L^2)) = L, so p = 0.99 * L / sum(L) + 0.01 / 4
    expected = 0.99 * torch.tensor([1.0, 1.0, 8.0, 1.0], dtype=torch.float64) / 11 + 0.0025
    torch.testing.assert_close(p, expected)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        t, weights = sampler.sample(2000, "cpu")
    counts = torch.bincount(t, minlength=4)
    assert counts[2] > 3 * counts[[0, 1, 3]].max()
    torch.testing.assert_close(weights, (1.0 / (expected[t] * 4)).float())


def test_importance_weights_keep_the_expected_loss_of_uniform_sampling():
    loss_per_t = torch.tensor([0.5, 2.0, 0.1, 3.0, 1.0], dtype=torch.float64)
    sampler = ImportanceTimestepSampler(num_timesteps=5, history=2)
    feed(sampler, loss_per_t.tolist(), visits=2)
    p = sampler.probabilities()
    assert not torch.allclose(p, torch.full_like(p, 0.2))
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        t, sampled_weights = sampler.sample(4000, "cpu")
    assert set(t.tolist()) == set(range(5))
    weights = torch.zeros(5, dtype=torch.float64)
    weights[t] = sampled_weights.double()  # the sampler's weight of each timestep
    # E_{t~p}[w(t) L_t], computed exactly from p and those weights: the uniform mean (a weight of p(t) T is not)
    assert (p * weights * loss_per_t).sum().item() == pytest.approx(loss_per_t.mean().item(), rel=1e-6)
    assert (p * (p * 5) * loss_per_t).sum().item() != pytest.approx(loss_per_t.mean().item(), rel=1e-3)


def test_importance_ema_tracks_the_recent_loss_squared():
    sampler = ImportanceTimestepSampler(num_timesteps=2, history=1, uniform_prob=0.0, ema_decay=0.5)
    sampler.update(torch.tensor([0, 1, 1]), torch.tensor([3.0, 2.0, 4.0]))
    # t = 0: first value 9; t = 1: 4, then 0.5 * 4 + 0.5 * 16 = 10
    state = sampler.state_dict()
    torch.testing.assert_close(state["loss_sq_ema"], torch.tensor([9.0, 10.0], dtype=torch.float64))
    assert state["counts"].tolist() == [1, 2]
    torch.testing.assert_close(
        sampler.probabilities(), torch.tensor([3.0, 10**0.5], dtype=torch.float64) / (3 + 10**0.5)
    )


def test_importance_state_dict_round_trip():
    sampler = ImportanceTimestepSampler(num_timesteps=4, history=2)
    feed(sampler, [1.0, 2.0, 3.0, 4.0], visits=2)
    state = sampler.state_dict()
    assert set(state) == {"num_timesteps", "counts", "loss_sq_ema"}
    assert isinstance(state["num_timesteps"], int) and isinstance(state["counts"], torch.Tensor)
    restored = ImportanceTimestepSampler(num_timesteps=4, history=2)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.probabilities(), sampler.probabilities(), rtol=0, atol=0)
    sampler.update(torch.tensor([0]), torch.tensor([100.0]))
    assert restored.state_dict()["counts"].tolist() == [2, 2, 2, 2]  # a copy, not shared with the original
    with pytest.raises(ValueError, match="timesteps"):
        ImportanceTimestepSampler(num_timesteps=5).load_state_dict(state)


def test_make_timestep_sampler_and_invalid_settings():
    assert isinstance(make_timestep_sampler("uniform", num_timesteps=5), UniformTimestepSampler)
    importance = make_timestep_sampler("importance", num_timesteps=4)
    assert isinstance(importance, ImportanceTimestepSampler) and importance.num_timesteps == 4
    with pytest.raises(ValueError, match="uniform, importance"):
        make_timestep_sampler("loss", num_timesteps=5)
    for kwargs, message in (
        ({"num_timesteps": 0}, "num_timesteps must be >= 1"),
        ({"num_timesteps": 4, "uniform_prob": 1.5}, r"uniform_prob must be in \[0, 1\]"),
        ({"num_timesteps": 4, "ema_decay": 1}, r"ema_decay must be in \[0, 1\)"),
    ):
        with pytest.raises(ValueError, match=message):
            ImportanceTimestepSampler(**kwargs)
