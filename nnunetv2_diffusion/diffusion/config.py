"""The diffusion settings a model is trained with; stored inside its checkpoint so inference rebuilds them."""

from dataclasses import asdict, dataclass, fields

from nnunetv2_diffusion.diffusion.samplers import SAMPLERS
from nnunetv2_diffusion.diffusion.schedules import SCHEDULES

STRATEGIES = ("standard", "self_conditioning", "self_conditioning_next", "xt_recycling", "xT_recycling")
"""Training strategies (DESIGN §1); 'self_conditioning_next' is Watson et al. 2023's estimate from t + 1."""


@dataclass(frozen=True)
class DiffusionConfig:
    """Training schedule and default sampler of one model.

    num_timesteps: T, training steps of the schedule (paper: 5); timestep t in [0, T-1] enters the network as
        tau = (t + 1) / T in (0, 1].
    schedule: 'linear' (the paper's 1001-step linear betas kept at T evenly spaced cumulative alphas) or 'cosine'.
    sampler / sampling_steps / eta: what inference uses unless told otherwise (paper: DDPM, 5 steps).
    self_conditioning: the network takes C more input channels holding the previous x0 estimate.
    strategy: how the model was trained (one of :data:`STRATEGIES`); a record for whoever loads the checkpoint,
        inference does not depend on it.
    """

    num_timesteps: int = 5
    schedule: str = "linear"
    sampler: str = "ddpm"
    sampling_steps: int = 5
    eta: float = 0.0
    self_conditioning: bool = False
    strategy: str = "standard"

    def __post_init__(self):
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2 (got {self.num_timesteps})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not 1 <= self.sampling_steps <= self.num_timesteps:
            raise ValueError(f"sampling_steps must be in [1, {self.num_timesteps}] (got {self.sampling_steps})")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1] (got {self.eta})")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown training strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DiffusionConfig":
        """Rebuilds a config from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown diffusion settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)
