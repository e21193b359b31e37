"""Recording wrappers that let tests see exactly what a training step feeds the network and the loss."""

import torch
from torch import nn

from nnunetv2_diffusion.networks.wrappers import highest_resolution


class SpyNetwork(nn.Module):
    """Wraps a DiffusionSegmentationUNet; records every call's inputs, grad mode and full-resolution output."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.calls: list[dict] = []

    @property
    def decoder(self):
        return self.network.decoder

    def forward(self, image, noisy_mask, tau, x0_previous=None):
        output = self.network(image, noisy_mask, tau, x0_previous)
        full = highest_resolution(output)
        self.calls.append({
            "image": image.detach().clone(), "noisy_mask": noisy_mask.detach().clone(), "tau": tau.detach().clone(),
            "x0_previous": None if x0_previous is None else x0_previous.detach().clone(),
            "grad_enabled": torch.is_grad_enabled(), "output_requires_grad": full.requires_grad,
            "output": full.detach().clone(),
        })
        return output


def spy_on_q_sample(trainer) -> list[dict]:
    """Replaces ``trainer.diffusion.q_sample`` by a recording pass-through; returns the record list."""
    calls = []
    real = trainer.diffusion.q_sample

    def recording_q_sample(x0, t, noise):
        x_t = real(x0, t, noise)
        calls.append({"x0": x0.detach().clone(), "t": t.clone(), "noise": noise.clone(), "x_t": x_t.detach().clone()})
        return x_t

    trainer.diffusion.q_sample = recording_q_sample
    return calls


def spy_on_loss(trainer) -> list[dict]:
    """Replaces ``trainer.loss`` by a recording pass-through (target, and the output at full resolution)."""
    calls = []
    real = trainer.loss

    def recording_loss(output, target):
        calls.append({"target": target, "output": highest_resolution(output).detach().clone()})
        return real(output, target)

    trainer.loss = recording_loss
    return calls
