"""How segmentation masks live in diffusion space (docs/design.md, "Notation" and "Region labels and the ignore
label").

A label map ``y`` with C classes becomes ``x0 = 2 * onehot(y) - 1`` in {-1, 1}; the network sees a noisy mask
``x_t`` through ``m(x_t) = (clip(x_t, -1, 1) + 1) / 2`` in [0, 1]; its C logits give ``x0_hat = 2 * softmax - 1``.
With nnU-Net's region labels the C channels are R possibly overlapping binary regions instead: ``x0 = 2 * r - 1``
per region and ``x0_hat = 2 * sigmoid - 1`` per channel. Voxels of nnU-Net's ignore label have x0 = 0 in every
channel: no information either way.
"""

import torch

PROBABILITY_FLOOR = 1e-20
"""Smallest probability taken to the log: log(1e-20) = -46 is finite in float32 and far below any that matters."""


def labels_to_x0(labels: torch.Tensor, num_classes: int, ignore_label: int | None = None) -> torch.Tensor:
    """labels: (B, 1, *spatial) integer class ids in [0, C-1] (and ``ignore_label``, if given, which must be C, the
    highest id, as nnU-Net requires) -> x0: (B, C, *spatial) float32 in {-1, 1}, 0 at ignored voxels."""
    ignored = None
    if ignore_label is not None:
        ignored = labels == ignore_label
        labels = labels.masked_fill(ignored, 0)
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), device=labels.device)
    onehot.scatter_(1, labels.long(), 1.0)
    x0 = 2.0 * onehot - 1.0
    return x0 if ignored is None else x0.masked_fill_(ignored, 0.0)


def regions_to_x0(regions: torch.Tensor) -> torch.Tensor:
    """nnU-Net's region target (B, R, *spatial) in {0, 1} -> x0: (B, R, *spatial) float32 in {-1, 1}."""
    return 2.0 * regions.float() - 1.0


def x0_from_logits(logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """logits: (B, C, *spatial) -> x0_hat: (B, C, *spatial) in [-1, 1]: 2 softmax - 1 over the channels (classes:
    channels summing to 2 - C), or 2 sigmoid - 1 per channel (regions)."""
    probabilities = torch.sigmoid(logits.float()) if regions else torch.softmax(logits.float(), dim=1)
    return 2.0 * probabilities - 1.0


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


def export_logits(probabilities: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Probabilities (C, *spatial) -> float32 "logits" that nnU-Net's inference nonlinearity maps back to them:
    log p for classes (softmax(log p) = p), log p - log(1 - p) for regions (sigmoid(logit p) = p)."""
    if not regions:
        return log_probabilities(probabilities)
    return log_probabilities(probabilities) - log_probabilities(1.0 - probabilities.float())


def entropy(probabilities: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Per-voxel entropy (nats) of probabilities (C, *spatial) -> (*spatial), with 0 log 0 = 0. Classes:
    -sum_c p log p, in [0, log C]; regions: the sum over regions of each one's binary entropy, in [0, R log 2].
    float64 input is computed in float64, anything else in float32."""
    p = probabilities if probabilities.dtype == torch.float64 else probabilities.float()
    h = -(p * torch.log(p.clamp_min(PROBABILITY_FLOOR)))
    if regions:
        h -= (1.0 - p) * torch.log((1.0 - p).clamp_min(PROBABILITY_FLOOR))
    return h.sum(0)
