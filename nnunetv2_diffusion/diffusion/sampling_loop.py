"""The reverse process as one loop, shared by per-tile sampling (the network's image-only call) and the predictor's
whole-case global-step sampling."""

from collections.abc import Callable

import torch

from nnunetv2_diffusion.diffusion.mask_encoding import probabilities_from_x0, x0_from_logits

DenoiseFn = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]
"""(x_t (B, C, *spatial), timestep t, previous x0 estimate (B, C, *spatial) in [-1, 1] or None) -> a result shaped
like x_t: logits for :func:`sample_probabilities`, x0_hat in [-1, 1] for :func:`reverse_process`."""


def reverse_process(denoise_x0: DenoiseFn, x_t: torch.Tensor, sampler, *, generator: torch.Generator | None = None,
                    on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Runs ``sampler.timesteps`` (set beforehand with ``set_timesteps``) from x_t = x_T.

    At each timestep ``denoise_x0`` predicts x0_hat from x_t and the previous estimate (None at the first step: there
    is none yet; self-conditioned networks see it as zero estimate channels), ``on_step(i, t, x0_hat)`` sees it, then
    ``sampler.step`` moves x_t to the next timestep, drawing its noise from ``generator``. ``denoise_x0`` and
    ``sampler.step`` may update their arguments in place (the predictor's whole-case buffers do).

    Returns the last x0_hat, (B, C, *spatial) in [-1, 1].
    """
    x0_hat = None
    for i, t in enumerate(sampler.timesteps.tolist()):
        x0_hat = denoise_x0(x_t, t, x0_hat)
        if on_step is not None:
            on_step(i, t, x0_hat)
        x_t = sampler.step(x0_hat, t, x_t, generator=generator)
    return x0_hat


def sample_probabilities(denoise: DenoiseFn, shape: tuple, sampler, *, device=None,
                         generator: torch.Generator | None = None, regions: bool = False) -> torch.Tensor:
    """x_T ~ N(0, I) of ``shape`` from ``generator`` (drawn on the generator's device, as diffusers does), then
    :func:`reverse_process` with x0_hat = 2 softmax(denoise logits) - 1 (2 sigmoid - 1 per channel for regions).

    Returns the last step's class (region) probabilities (B, C, *spatial) float32 in [0, 1].
    """
    x_t = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
    x0_hat = reverse_process(lambda x, t, previous: x0_from_logits(denoise(x, t, previous), regions), x_t, sampler,
                             generator=generator)
    return probabilities_from_x0(x0_hat)
