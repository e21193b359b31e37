"""The planned nnU-Net network, conditioned on a noisy mask and a timestep.

The U-Net is exactly the one nnU-Net plans (PlainConvUNet, ResidualEncoderUNet, ...), built with more input
channels: image channels + C noisy-mask channels (+ C previous-estimate channels for self-conditioning). The
timestep enters as per-channel scales and shifts (FiLM, as in improved-diffusion's ResBlocks), attached with forward
hooks so the U-Net's own modules, forward pass and state-dict keys stay untouched. Where they attach is the stored
``conditioning`` setting:

- 'stage': on the output of every encoder and decoder stage, after its last nonlinearity; randomly initialised.
- 'block': on the output of every normalisation layer of the encoder and decoder, before its nonlinearity (the DDPM /
  improved-diffusion convention). The FiLM layers and the first convolution's mask weights start at zero, so the
  untrained network ignores x_t and tau and is distributed as a stock nnU-Net network of the image alone.
"""

import math

import torch
from torch import nn

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.mask_encoding import export_logits, network_mask_input
from nnunetv2_diffusion.diffusion.samplers import make_sampler
from nnunetv2_diffusion.diffusion.sampling_loop import sample_probabilities
from nnunetv2_diffusion.diffusion.schedules import make_alphas_cumprod, timestep_to_tau
from nnunetv2_diffusion.diffusion.seeding import content_seed
from nnunetv2_diffusion.networks.timestep_embedding import TimestepEmbedding
from nnunetv2_diffusion.networks.wrappers import highest_resolution

TILE_SEED = 0
"""Seed of the per-tile sampling that stock nnU-Net's predictor triggers (combined with each tile's content)."""

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _stage_outputs(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, output channels) of every encoder stage, then every decoder stage."""
    encoder_channels = list(unet.encoder.output_channels)
    decoder_channels = encoder_channels[-2::-1]  # decoder stage s outputs the channels of skip -(s + 2)
    stages = list(unet.encoder.stages) + list(unet.decoder.stages)
    return list(zip(stages, encoder_channels + decoder_channels, strict=True))


def _normalisations(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, channels) of every normalisation layer of the encoder (stem included) and the decoder stages, in
    registration order. The decoder's reference to the encoder is not walked, so no layer appears twice."""
    parts = [unet.encoder.stem] if getattr(unet.encoder, "stem", None) is not None else []
    parts += [unet.encoder.stages, unet.decoder.stages]
    found = {}
    for part in parts:
        for module in part.modules():
            if isinstance(module, _NORMS):
                channels = module.num_channels if isinstance(module, nn.GroupNorm) else (
                    module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.num_features)
                found.setdefault(id(module), (module, channels))
    if not found:
        raise ValueError("block conditioning needs normalisation layers in the U-Net; its plans have none "
                         "(use conditioning 'stage')")
    return list(found.values())


def first_convolution(unet: nn.Module) -> nn.Module:
    """The convolution that reads the network input (image and mask channels)."""
    return next(m for m in unet.encoder.modules() if isinstance(m, nn.modules.conv._ConvNd))


class DiffusionSegmentationUNet(nn.Module):
    """x0-parameterised denoiser ``f(image, x_t, tau) -> logits`` around a planned U-Net.

    Calls:
      - ``net(image, noisy_mask, tau[, x0_previous])``: denoising logits (B, C, *spatial), a list of
        deep-supervision outputs (highest resolution first) when the decoder's deep supervision is on.
      - ``net(image)``: the full reverse process with the stored default sampler, its noise seeded from the tile's
        content (:data:`TILE_SEED`); returns the "logits" whose inference nonlinearity (softmax, or sigmoid for
        regions) gives the sampled probabilities (:func:`export_logits`), (B, C, *spatial). This is what stock
        ``nnUNetPredictor`` calls per tile, so stock ``nnUNetv2_predict`` works unchanged and repeats exactly.

    The diffusion settings (:class:`DiffusionConfig`) travel in the state dict as extra state, so a checkpoint
    carries the schedule and conditioning it was trained with.
    """

    def __init__(self, unet: nn.Module, *, num_image_channels: int, num_classes: int, config: DiffusionConfig,
                 embed_dim: int = 256):
        super().__init__()
        self.unet = unet
        self.num_image_channels = num_image_channels
        self.num_classes = num_classes
        self.config = config
        self.time_embedding = TimestepEmbedding(embed_dim=embed_dim)
        conditioned = _stage_outputs(unet) if config.conditioning == "stage" else _normalisations(unet)
        self.film = nn.ModuleList(nn.Linear(embed_dim, 2 * channels) for _, channels in conditioned)
        self._film_params: list[torch.Tensor] | None = None
        for index, (module, _) in enumerate(conditioned):
            module.register_forward_hook(self._make_film_hook(index))
        if config.conditioning == "block":
            self.reset_conditioning()
            self._rescale_image_weights()

    @property
    def decoder(self) -> nn.Module:
        """nnU-Net toggles deep supervision through ``network.decoder.deep_supervision``."""
        return self.unet.decoder

    @torch.no_grad()
    def reset_conditioning(self) -> None:
        """Zeroes every FiLM layer (scale 0, shift 0: identity) and the first convolution's weights of the mask (and
        estimate) channels, so the network computes a function of the image alone until training moves them."""
        for layer in self.film:
            layer.weight.zero_()
            layer.bias.zero_()
        first_convolution(self.unet).weight[:, self.num_image_channels:].zero_()

    @torch.no_grad()
    def _rescale_image_weights(self) -> None:
        """nnU-Net's He initialisation draws the first convolution with std ~ 1 / sqrt(its input channels), mask
        channels included; rescaled so the image weights have the spread of a network of the image channels alone."""
        weight = first_convolution(self.unet).weight
        weight[:, :self.num_image_channels] *= math.sqrt(weight.shape[1] / self.num_image_channels)

    def _make_film_hook(self, index: int):
        def apply_film(_module, _inputs, output):
            if self._film_params is None:
                raise RuntimeError("the U-Net was called without a timestep; call the DiffusionSegmentationUNet")
            scale, shift = self._film_params[index].chunk(2, dim=1)
            view = (*scale.shape, *([1] * (output.ndim - 2)))
            return torch.addcmul(shift.reshape(view), output, 1 + scale.reshape(view))  # one fused kernel
        return apply_film

    def forward(self, image: torch.Tensor, noisy_mask: torch.Tensor | None = None, tau: torch.Tensor | None = None,
                x0_previous: torch.Tensor | None = None):
        if noisy_mask is None:  # stock nnU-Net's per-tile call: noise seeded from the tile, so runs repeat exactly
            generator = torch.Generator().manual_seed(content_seed(image, TILE_SEED))
            return export_logits(self.sample(image, generator=generator), self.config.regions)
        return self.denoise(image, noisy_mask, tau, x0_previous)

    def denoise(self, image: torch.Tensor, noisy_mask: torch.Tensor, tau: torch.Tensor,
                x0_previous: torch.Tensor | None = None):
        """image: (B, image channels, *spatial) nnU-Net-normalised; noisy_mask: x_t (B, C, *spatial) any range;
        tau: (B,) in (0, 1]; x0_previous: (B, C, *spatial) in [-1, 1] or None (zeros), self-conditioning only.
        Returns logits (B, C, *spatial) or the deep-supervision list."""
        inputs = [image, network_mask_input(noisy_mask)]
        if self.config.self_conditioning:
            inputs.append(torch.zeros_like(noisy_mask) if x0_previous is None else network_mask_input(x0_previous))
        embedding = self.time_embedding(tau.to(image.device))
        self._film_params = [layer(embedding) for layer in self.film]
        try:
            return self.unet(torch.cat(inputs, dim=1))
        finally:
            self._film_params = None

    def tau(self, t: int, batch_size: int, device) -> torch.Tensor:
        """Timestep t in [0, T-1] -> tau (batch_size,) (:func:`timestep_to_tau`)."""
        return torch.full((batch_size,), timestep_to_tau(t, self.config.num_timesteps), device=device)

    def make_sampler(self, name: str | None = None, steps: int | None = None, eta: float | None = None):
        """A DDPM/DDIM sampler on this model's training schedule; arguments default to the stored config
        (:meth:`DiffusionConfig.sampling` checks them)."""
        name, steps, eta = self.config.sampling(name, steps, eta)
        sampler = make_sampler(name, alphas_cumprod=make_alphas_cumprod(self.config.schedule,
                                                                        self.config.num_timesteps), eta=eta)
        sampler.set_timesteps(steps)
        return sampler

    @torch.no_grad()
    def sample(self, image: torch.Tensor, sampler=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-patch reverse process. image: (B, image channels, *spatial) -> probabilities (B, C, *spatial)."""
        sampler = sampler or self.make_sampler()

        def denoise(x_t, t, x0_previous):
            return highest_resolution(self.denoise(image, x_t, self.tau(t, image.shape[0], image.device), x0_previous))

        shape = (image.shape[0], self.num_classes, *image.shape[2:])
        return sample_probabilities(denoise, shape, sampler, device=image.device, generator=generator,
                                    regions=self.config.regions)

    def get_extra_state(self) -> dict:
        return self.config.to_dict()

    def set_extra_state(self, state: dict) -> None:
        loaded = DiffusionConfig.from_dict(state)
        for field, meaning in (("self_conditioning", "input channels"), ("conditioning", "timestep layers")):
            if getattr(loaded, field) != getattr(self.config, field):
                raise ValueError(f"checkpoint and network disagree on {field} ({getattr(loaded, field)!r} vs "
                                 f"{getattr(self.config, field)!r}: different {meaning})")
        self.config = loaded

    @torch.no_grad()
    def load_stock_weights(self, stock_weights: dict, source: str = "the stock checkpoint") -> None:
        """Warm start from a stock nnU-Net network of the same plans: every U-Net weight is copied (the segmentation
        layers too), the first convolution gets the stock image weights and zeros for the mask channels, and the
        conditioning is reset (:meth:`reset_conditioning`), so the network computes the stock network's function
        exactly, whatever x_t and tau, until training moves the new weights.

        Raises:
            ValueError: naming the first weight that is missing or has another shape than this network's.
        """
        own = self.unet.state_dict()
        extra = sorted(set(stock_weights) - set(own))
        if extra:
            raise ValueError(f"{source} holds weights this network does not have ({', '.join(extra[:3])}, ...): "
                             f"another architecture")
        weights = {}
        for key, ours in own.items():
            if key not in stock_weights:
                raise ValueError(f"{source} lacks the weight {key}: another architecture")
            theirs = stock_weights[key]
            if theirs.shape == ours.shape:
                weights[key] = theirs
            elif (theirs.ndim == ours.ndim > 2 and theirs.shape[0] == ours.shape[0]
                  and theirs.shape[2:] == ours.shape[2:] and theirs.shape[1] == self.num_image_channels):
                weights[key] = torch.cat([theirs, ours.new_zeros((ours.shape[0], ours.shape[1] - theirs.shape[1],
                                                                  *ours.shape[2:]))], dim=1)
            else:
                raise ValueError(f"{source}: weight {key} has shape {tuple(theirs.shape)}, this network needs "
                                 f"{tuple(ours.shape)}")
        self.unet.load_state_dict(weights)
        self.reset_conditioning()
