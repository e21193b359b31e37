"""The planned nnU-Net network, conditioned on a noisy mask and a timestep.

The U-Net is exactly the one nnU-Net plans (PlainConvUNet, ResidualEncoderUNet, ...), built with more input
channels: image channels + C noisy-mask channels (+ C previous-estimate channels for self-conditioning). The
timestep enters every encoder and decoder stage as a per-channel scale and shift of the stage's output (FiLM,
as in improved-diffusion's ResBlocks), attached with forward hooks so the U-Net's own modules, forward pass and
state-dict keys stay untouched.
"""

import torch
from torch import nn

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.mask_encoding import network_mask_input
from nnunetv2_diffusion.diffusion.samplers import make_sampler
from nnunetv2_diffusion.diffusion.sampling_loop import sample_probabilities
from nnunetv2_diffusion.diffusion.schedules import make_alphas_cumprod
from nnunetv2_diffusion.networks.timestep_embedding import TimestepEmbedding


class DiffusionSegmentationUNet(nn.Module):
    """x0-parameterised denoiser ``f(image, x_t, tau) -> logits`` around a planned U-Net.

    Calls:
      - ``net(image, noisy_mask, tau[, x0_previous])``: denoising logits (B, C, *spatial), a list of
        deep-supervision outputs (highest resolution first) when the decoder's deep supervision is on.
      - ``net(image)``: the full reverse process with the stored default sampler; returns log-probabilities
        (B, C, *spatial). This is what stock ``nnUNetPredictor`` calls per tile, so stock ``nnUNetv2_predict`` and
        nnU-Net's final validation work unchanged.

    The diffusion settings (:class:`DiffusionConfig`) travel in the state dict as extra state, so a checkpoint
    carries the schedule it was trained with.
    """

    def __init__(self, unet: nn.Module, *, num_image_channels: int, num_classes: int, config: DiffusionConfig,
                 embed_dim: int = 256):
        super().__init__()
        self.unet = unet
        self.num_image_channels = num_image_channels
        self.num_classes = num_classes
        self.config = config
        self.time_embedding = TimestepEmbedding(embed_dim=embed_dim)
        encoder_channels = list(unet.encoder.output_channels)
        decoder_channels = encoder_channels[-2::-1]  # decoder stage s outputs the channels of skip -(s + 2)
        stages = list(unet.encoder.stages) + list(unet.decoder.stages)
        self.film = nn.ModuleList(nn.Linear(embed_dim, 2 * c) for c in encoder_channels + decoder_channels)
        assert len(stages) == len(self.film), "every encoder and decoder stage needs one FiLM layer"
        self._film_params: list[torch.Tensor] | None = None
        for index, stage in enumerate(stages):
            stage.register_forward_hook(self._make_film_hook(index))

    @property
    def decoder(self) -> nn.Module:
        """nnU-Net toggles deep supervision through ``network.decoder.deep_supervision``."""
        return self.unet.decoder

    @property
    def num_mask_channels(self) -> int:
        return self.num_classes * (2 if self.config.self_conditioning else 1)

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
        if noisy_mask is None:
            return torch.log(self.sample(image).clamp_min(1e-8))
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
        """Training timestep t in [0, T-1] -> tau = (t + 1) / T, shape (batch_size,)."""
        return torch.full((batch_size,), (t + 1) / self.config.num_timesteps, device=device)

    def make_sampler(self, name: str | None = None, steps: int | None = None, eta: float | None = None):
        """A DDPM/DDIM sampler on this model's training schedule; arguments default to the stored config."""
        name = name or self.config.sampler
        alphas_cumprod = make_alphas_cumprod(self.config.schedule, self.config.num_timesteps)
        eta = (self.config.eta if eta is None else eta) if name == "ddim" else 0.0
        sampler = make_sampler(name, alphas_cumprod=alphas_cumprod, eta=eta)
        sampler.set_timesteps(steps or self.config.sampling_steps)
        return sampler

    @torch.no_grad()
    def sample(self, image: torch.Tensor, sampler=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-patch reverse process. image: (B, image channels, *spatial) -> probabilities (B, C, *spatial)."""
        sampler = sampler or self.make_sampler()

        def denoise(x_t, t, x0_previous):
            logits = self.denoise(image, x_t, self.tau(t, image.shape[0], image.device), x0_previous)
            return logits[0] if isinstance(logits, (list, tuple)) else logits

        shape = (image.shape[0], self.num_classes, *image.shape[2:])
        return sample_probabilities(denoise, shape, sampler, device=image.device, generator=generator)

    def get_extra_state(self) -> dict:
        return self.config.to_dict()

    def set_extra_state(self, state: dict) -> None:
        loaded = DiffusionConfig.from_dict(state)
        if loaded.self_conditioning != self.config.self_conditioning:
            raise ValueError("checkpoint and network disagree on self-conditioning (different input channels)")
        self.config = loaded
