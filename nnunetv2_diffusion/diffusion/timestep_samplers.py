"""Which training timestep each sample of a batch gets, and the loss weight that keeps the loss unbiased.

Both samplers draw t in [0, num_timesteps - 1]; a trainer that needs t in [0, T-2] (recycling) passes T - 1.
"""

import torch

TIMESTEP_SAMPLERS = ("uniform", "importance")


class UniformTimestepSampler:
    """t ~ U{0, ..., num_timesteps - 1}, every loss weight 1."""

    def __init__(self, *, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (t long (B,) in [0, num_timesteps - 1], weights float32 (B,) all 1), both on ``device``."""
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device)
        return t, torch.ones(batch_size, dtype=torch.float32, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling keeps no statistics."""


class ImportanceTimestepSampler:
    """Loss-aware timestep sampling (Nichol & Dhariwal 2021, sec. 3.3; ImgX-DiffSeg's time sampler).

    p(t) is proportional to sqrt(E[L_t^2]), with E[L_t^2] tracked as an exponential moving average of the
    per-sample loss squared, mixed with ``uniform_prob`` of the uniform distribution so no t starves:
    p(t) = (1 - uniform_prob) sqrt(ema_t) / sum_s sqrt(ema_s) + uniform_prob / T. Until every t has been seen
    ``history`` times, p is uniform.

    The loss weight is w(t) = 1 / (p(t) T), so E_{t~p}[w(t) L_t] = (1/T) sum_t L_t: the same expected loss as
    uniform sampling, with lower variance. The reference ImgX-DiffSeg code multiplies the loss by p(t) T instead,
    which biases the objective further towards the timesteps that are already sampled most; we divide.
    """

    def __init__(self, *, num_timesteps: int, history: int = 10, uniform_prob: float = 0.01, ema_decay: float = 0.9):
        """
        Args:
            num_timesteps: T, samples t in [0, T-1].
            history: visits of every t needed before p leaves the uniform distribution.
            uniform_prob: share of the uniform distribution in p, in [0, 1].
            ema_decay: weight of the old value in the moving average of the loss squared, in [0, 1).
        """
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.num_timesteps = num_timesteps
        self.history = history
        self.uniform_prob = uniform_prob
        self.ema_decay = ema_decay
        self._counts = torch.zeros(num_timesteps, dtype=torch.int64)
        self._loss_sq_ema = torch.zeros(num_timesteps, dtype=torch.float64)

    def probabilities(self) -> torch.Tensor:
        """p(t): float64 (T,) on the CPU, summing to 1."""
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        if bool((self._counts < self.history).any()):
            return uniform
        root_mean_square = self._loss_sq_ema.sqrt()
        total = root_mean_square.sum()
        if total <= 0:
            return uniform
        return (1.0 - self.uniform_prob) * root_mean_square / total + self.uniform_prob * uniform

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (t long (B,) in [0, T-1], weights float32 (B,) = 1 / (p(t) T)), both on ``device``."""
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True)
        weights = 1.0 / (p[t] * self.num_timesteps)
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Feeds back the per-sample losses of a batch.

        Args:
            t: long (B,), the timesteps :meth:`sample` returned.
            losses: float (B,), each sample's unweighted loss (detached; moved to the CPU here). The first value
                seen for a t starts its average, so it is not pulled towards 0 by an all-zero start.
        """
        for step, loss in zip(t.tolist(), losses.detach().double().tolist(), strict=True):
            if self._counts[step] == 0:
                self._loss_sq_ema[step] = loss**2
            else:
                self._loss_sq_ema[step] = self.ema_decay * self._loss_sq_ema[step] + (1.0 - self.ema_decay) * loss**2
            self._counts[step] += 1

    def state_dict(self) -> dict:
        """Plain tensors and ints, for a checkpoint: {"num_timesteps", "counts", "loss_sq_ema"}."""
        return {
            "num_timesteps": self.num_timesteps,
            "counts": self._counts.clone(),
            "loss_sq_ema": self._loss_sq_ema.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` output; ValueError if it was saved for another num_timesteps."""
        if state["num_timesteps"] != self.num_timesteps:
            raise ValueError(f"state is for {state['num_timesteps']} timesteps, this sampler has {self.num_timesteps}")
        self._counts = state["counts"].to(device="cpu", dtype=torch.int64).clone()
        self._loss_sq_ema = state["loss_sq_ema"].to(device="cpu", dtype=torch.float64).clone()


def make_timestep_sampler(name: str, *, num_timesteps: int) -> UniformTimestepSampler | ImportanceTimestepSampler:
    """The named timestep sampler (one of :data:`TIMESTEP_SAMPLERS`) with its default settings."""
    if name == "uniform":
        return UniformTimestepSampler(num_timesteps=num_timesteps)
    if name == "importance":
        return ImportanceTimestepSampler(num_timesteps=num_timesteps)
    raise ValueError(f"unknown timestep sampler {name!r}; valid: {', '.join(TIMESTEP_SAMPLERS)}")
