"""The reverse process as one loop, shared by per-tile and whole-case (sliding-window) sampling."""

from collections.abc import Callable

import torch

from nnunetv2_diffusion.diffusion.mask_encoding import no_estimate_like, probabilities_from_x0, x0_from_logits

DenoiseFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
"""(x_t (B, C, *spatial), timestep t, previous x0 estimate (B, C, *spatial) in [-1, 1]) -> logits (B, C, *spatial)."""


def sample_probabilities(denoise: DenoiseFn, shape: tuple, sampler, *, device=None,
                         generator: torch.Generator | None = None,
                         on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Runs ``sampler.timesteps`` (set beforehand with ``set_timesteps``) from x_T ~ N(0, I).

    At each timestep the model predicts x0 from x_t, then ``sampler.step`` moves x_t to the previous timestep.
    The previous x0 estimate is handed to ``denoise`` for self-conditioned models; at the first step it is -1
    everywhere (:func:`no_estimate_like`), which the network sees as the zero channels of "no estimate".
    ``on_step(i, t, probabilities)`` sees every step's probabilities (for per-step Dice).

    Returns the last step's class probabilities (B, C, *spatial) float32 in [0, 1].
    """
    x_t = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
    x0_hat = no_estimate_like(x_t)
    for i, t in enumerate(sampler.timesteps.tolist()):
        x0_hat = x0_from_logits(denoise(x_t, t, x0_hat))
        if on_step is not None:
            on_step(i, t, probabilities_from_x0(x0_hat))
        x_t = sampler.step(x0_hat, t, x_t, generator=generator)
    return probabilities_from_x0(x0_hat)
