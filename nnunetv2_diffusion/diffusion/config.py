"""The diffusion settings a model is trained with; stored inside its checkpoint so inference rebuilds them."""

from dataclasses import asdict, dataclass, fields

from nnunetv2_diffusion.diffusion.samplers import check_sampling_options
from nnunetv2_diffusion.diffusion.schedules import SCHEDULES

STRATEGIES = ("standard", "self_conditioning", "self_conditioning_next", "xt_recycling", "xT_recycling")
"""Training strategies (docs/design.md); 'self_conditioning_next' is Watson et al. 2023's estimate from t + 1."""

CONDITIONINGS = ("stage", "block")
"""Where the timestep enters the U-Net: 'stage' scales and shifts each stage's output (after its last nonlinearity);
'block' scales and shifts every normalisation output (before its nonlinearity), zero-initialised, with zero-initialised
mask weights in the first convolution, so the untrained network ignores x_t and tau (docs/design.md)."""


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
    conditioning: one of :data:`CONDITIONINGS`; checkpoints written before the field existed are 'stage'.
    regions: the C mask channels are nnU-Net regions (binary, may overlap; a sigmoid each) rather than exclusive
        classes (one softmax). A property of the dataset, not the trainer class: the trainer sets it when it builds
        the network, so inference finds it in the checkpoint.
    """

    num_timesteps: int = 5
    schedule: str = "linear"
    sampler: str = "ddpm"
    sampling_steps: int = 5
    eta: float = 0.0
    self_conditioning: bool = False
    strategy: str = "standard"
    conditioning: str = "stage"
    regions: bool = False

    def __post_init__(self):
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2 (got {self.num_timesteps})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        check_sampling_options(self.sampler, self.sampling_steps, self.eta if self.sampler == "ddim" else None,
                               self.num_timesteps)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown training strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def sampling(self, sampler: str | None = None, steps: int | None = None,
                 eta: float | None = None) -> tuple[str, int, float]:
        """(sampler, steps, eta) for inference: what is given, checked against this model's T, else the stored
        defaults. eta is 0 for DDPM; an eta given with DDPM (explicitly or as the stored sampler) is an error."""
        name = sampler or self.sampler
        check_sampling_options(name, steps, eta, self.num_timesteps)
        if eta is not None and name == "ddpm":
            raise ValueError("eta applies to the ddim sampler only (choose the ddim sampler or give no eta)")
        eta = (self.eta if eta is None else eta) if name == "ddim" else 0.0
        return name, steps or self.sampling_steps, eta

    @classmethod
    def from_dict(cls, values: dict) -> "DiffusionConfig":
        """Rebuilds a config from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown diffusion settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)
