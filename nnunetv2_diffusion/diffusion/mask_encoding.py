"""How segmentation masks live in diffusion space (docs/design.md, "Notation").

A label map ``y`` with C classes becomes ``x0 = 2 * onehot(y) - 1`` in {-1, 1}; the network sees a noisy mask
``x_t`` through ``m(x_t) = (clip(x_t, -1, 1) + 1) / 2`` in [0, 1]; its C logits give ``x0_hat = 2 * softmax - 1``.
"""

import torch

PROBABILITY_FLOOR = 1e-20
"""Smallest probability taken to the log: log(1e-20) = -46 is finite in float32 and far below any that matters."""


def labels_to_x0(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels: (B, 1, *spatial) integer class ids in [0, C-1] -> x0: (B, C, *spatial) float32 in {-1, 1}."""
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), device=labels.device)
    onehot.scatter_(1, labels.long(), 1.0)
    return 2.0 * onehot - 1.0


def x0_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """logits: (B, C, *spatial) -> x0_hat: (B, C, *spatial) in [-1, 1], channels summing to 2 - C."""
    return 2.0 * torch.softmax(logits.float(), dim=1) - 1.0


def network_mask_input(x: torch.Tensor) -> torch.Tensor:
    """m(x): a noisy or predicted mask (B, C, *spatial), any range -> (B, C, *spatial) in [0, 1]."""
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


def probabilities_from_x0(x0: torch.Tensor) -> torch.Tensor:
    """x0_hat: (B, C, *spatial) in [-1, 1] -> class probabilities (B, C, *spatial) in [0, 1]."""
    return (x0 + 1.0) / 2.0


def no_estimate_like(x: torch.Tensor) -> torch.Tensor:
    """Self-conditioning's "no previous estimate", shaped like x (B, C, *spatial): -1 everywhere, so that
    m(-1) = 0 puts zeros in the estimate channels, as training does for dropped samples and first passes."""
    return torch.full_like(x, -1.0)


def log_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Class probabilities (any shape) -> float32 log-probabilities, floored at :data:`PROBABILITY_FLOOR`; nnU-Net's
    export takes them as its "logits" because softmax(log p) = p."""
    return torch.log(probabilities.float().clamp_min(PROBABILITY_FLOOR))


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy -sum_c p log p (nats) of class probabilities (C, *spatial) -> (*spatial), with 0 log 0 = 0;
    in [0, log C]. float64 input is computed in float64, anything else in float32."""
    p = probabilities if probabilities.dtype == torch.float64 else probabilities.float()
    return -(p * torch.log(p.clamp_min(PROBABILITY_FLOOR))).sum(0)
