"""The pieces of global-step sliding-window sampling: at every denoising step, nnU-Net's sliding window (its tiles,
Gaussian tile weights and mirroring) predicts x0 over the whole case, then one sampler update moves the whole-case x_t.

Whole-case arrays are float32 and updated in place, so a step holds x_t, one x0 buffer (two with self-conditioning)
and the tile weights: the memory of about two stock nnU-Net predictions in float32.
"""

from collections.abc import Callable

import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import dummy_context
from torch import nn

from nnunetv2_diffusion.diffusion.mask_encoding import no_estimate_like
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet
from nnunetv2_diffusion.networks.wrappers import highest_resolution

UPDATE_CHUNK_ELEMENTS = 2**24
"""The whole-case sampler update runs on chunks of at most this many values (64 MiB in float32), in place."""


class StepDenoiser(nn.Module):
    """The denoiser at one timestep, presented as an image-only network so nnU-Net's mirroring can call it.

    A tile is concat(image, x_t[, x0_previous]) on the channel axis, so a flip moves all of them together; the
    output is float32 logits, so mirror averaging is float32 too.
    """

    def __init__(self, network: nn.Module, diffusion_network: DiffusionSegmentationUNet, autocast_device: str | None):
        super().__init__()
        self.network = network  # possibly compiled / DDP-wrapped: called, never looked into
        self.num_image_channels = diffusion_network.num_image_channels
        self.num_classes = diffusion_network.num_classes
        self.self_conditioning = diffusion_network.config.self_conditioning
        self.regions = diffusion_network.config.regions
        self.tau_value = diffusion_network.tau
        self.autocast_device = autocast_device
        self.timestep: int | None = None

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        c, k = self.num_image_channels, self.num_classes
        image, x_t = tiles[:, :c], tiles[:, c:c + k]
        x0_previous = tiles[:, c + k:] if self.self_conditioning else None
        tau = self.tau_value(self.timestep, tiles.shape[0], tiles.device)
        context = torch.autocast(self.autocast_device, enabled=True) if self.autocast_device else dummy_context()
        with context:
            logits = self.network(image, x_t, tau, x0_previous)
        return highest_resolution(logits).float()


def x0_from_logits_in_place(logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """``mask_encoding.x0_from_logits`` for one case (C, *spatial) float32, overwriting the logits:
    2 softmax(logits) - 1 over the channel axis, or 2 sigmoid(logits) - 1 per channel for regions."""
    if regions:
        return logits.sigmoid_().mul_(2).sub_(1)
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True)).mul_(2).sub_(1)


class ChunkedInPlaceUpdate:
    """A sampler whose ``step`` updates the whole-case x_t in place, chunk by chunk.

    ``sampler.step`` is elementwise but allocates several temporaries the size of its input; on a large 3D case
    these would dominate the memory. Here it runs on chunks of at most ``max_elements`` values of the flattened
    (1, C, N) arrays and writes each result back into x_t. Each chunk draws its own noise from the generator, in
    order, so a case of at most ``max_elements`` values is one chunk and draws exactly what ``sampler.step`` on the
    whole case draws; larger cases get a different (equally valid) noise field for the same seed.
    """

    def __init__(self, sampler, max_elements: int = UPDATE_CHUNK_ELEMENTS):
        self.sampler = sampler
        self.timesteps = sampler.timesteps
        self.max_elements = max_elements

    def step(self, x0_pred: torch.Tensor, timestep, sample: torch.Tensor, *, generator=None) -> torch.Tensor:
        """x0_pred, sample: (B, C, *spatial); returns ``sample``, updated to the next timestep. ``generator``: one
        generator, or one per sample (a list), so a batch of samples draws what each would draw alone."""
        if isinstance(generator, (list, tuple)):
            for index, sample_generator in enumerate(generator):
                self.step(x0_pred[index:index + 1], timestep, sample[index:index + 1], generator=sample_generator)
            return sample
        x0_flat = x0_pred.reshape(1, x0_pred.shape[1], -1)
        sample_flat = sample.view(1, sample.shape[1], -1)
        width = max(1, self.max_elements // sample.shape[1])
        for start in range(0, sample_flat.shape[2], width):
            chunk = (slice(None), slice(None), slice(start, start + width))
            sample_flat[chunk] = self.sampler.step(x0_flat[chunk], timestep, sample_flat[chunk], generator=generator)
        return sample


def tile_weights(patch_size: tuple, slicers: list, spatial: tuple, use_gaussian: bool,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight of one tile (*patch), sum of the weights of all tiles over the case (*spatial)), float32: nnU-Net's
    Gaussian (sigma 1/8 of the patch, as its predictor) or ones."""
    if use_gaussian:
        gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                                    dtype=torch.float32, device=device)
    else:
        gaussian = torch.ones(tuple(patch_size), device=device)
    weights = torch.zeros(spatial, dtype=torch.float32, device=device)
    for slicer in slicers:
        weights[slicer[1:]] += gaussian
    return gaussian, weights


class WholeCaseDenoiser:
    """``denoise_x0`` of :func:`diffusion.sampling_loop.reverse_process` over a whole case, for B samples at once.

    Called with the whole-case x_t (B, C, *spatial), a timestep and the previous x0_hat (or None), it runs every
    tile of all B samples as one batch through ``predict_tile`` (nnU-Net's mirroring around :class:`StepDenoiser`),
    blends them with the tile weights and returns x0_hat (B, C, *spatial) in [-1, 1]. The result is written into one
    of two reused buffers, the one that does not hold the previous estimate, which the tiles of this step still read.
    """

    def __init__(self, image: torch.Tensor, slicers: list, gaussian: torch.Tensor, weights: torch.Tensor,
                 denoiser: StepDenoiser, predict_tile: Callable[[torch.Tensor], torch.Tensor], tile_device,
                 batch_size: int = 1):
        self.image, self.slicers, self.gaussian, self.weights = image, slicers, gaussian, weights
        self.denoiser, self.predict_tile, self.tile_device = denoiser, predict_tile, tile_device
        shape = (batch_size, denoiser.num_classes, *image.shape[1:])
        self.buffers = [torch.empty(shape, dtype=torch.float32, device=image.device)
                        for _ in range(2 if denoiser.self_conditioning else 1)]

    def __call__(self, x_t: torch.Tensor, t: int, x0_previous: torch.Tensor | None) -> torch.Tensor:
        self.denoiser.timestep = t
        if self.denoiser.self_conditioning and x0_previous is None:  # "no estimate": zero channels after m(x)
            x0_previous = no_estimate_like(x_t)
        x0 = self.buffers[0] if x0_previous is not self.buffers[0] else self.buffers[-1]
        x0.zero_()
        batch_size = x_t.shape[0]
        for slicer in self.slicers:
            batched = (slice(None), *slicer)  # slicer indexes (channels, *spatial); this adds the sample axis
            image = self.image[slicer]
            parts = [image[None].expand(batch_size, *image.shape), x_t[batched]]
            if self.denoiser.self_conditioning:
                parts.append(x0_previous[batched])
            tile = torch.cat(parts, dim=1).to(self.tile_device, non_blocking=True)
            prediction = self.predict_tile(tile).to(x0.device)
            x0[batched] += prediction.mul_(self.gaussian)
        for sample in x0.div_(self.weights):
            x0_from_logits_in_place(sample, self.denoiser.regions)
        return x0
