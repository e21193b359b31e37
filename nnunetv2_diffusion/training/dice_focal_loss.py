"""The paper's segmentation loss: foreground-mean soft Dice + 20 x focal (gamma = 2) (Fu et al. 2023; docs/design.md).

nnU-Net's Dice + CE stays the default loss of every diffusion trainer; this one is a variant (``_focalDice``).
"""

import torch
from torch import nn


class DiceFocalLoss(nn.Module):
    """Per sample: mean over the foreground classes present in its ground truth of 1 - soft Dice, plus
    ``focal_weight`` times the voxel mean of the focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017).

    Classes absent from a sample's ground truth are left out of its Dice term (their Dice is undefined without
    smoothing); a sample without any foreground gets a Dice term of 0. The batch loss is the mean over samples.
    """

    def __init__(self, focal_weight: float = 20.0, gamma: float = 2.0):
        super().__init__()
        self.focal_weight = focal_weight
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, C, *spatial); target: (B, 1, *spatial) class ids in [0, C-1]. Returns the scalar loss."""
        return self.per_sample(logits, target).mean()

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Same inputs as :meth:`forward`; returns the loss of each sample, float32 (B,)."""
        log_probs = torch.log_softmax(logits.float(), dim=1)
        probs = log_probs.exp()
        onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
        axes = tuple(range(2, logits.ndim))

        intersection = (probs * onehot).sum(axes)[:, 1:]
        denominator = (probs + onehot).sum(axes)[:, 1:]
        present = onehot.sum(axes)[:, 1:] > 0
        dice_loss = torch.where(present, 1.0 - 2.0 * intersection / denominator.clamp_min(1e-8), 0.0)
        dice_loss = dice_loss.sum(1) / present.sum(1).clamp_min(1)

        log_p_true = (log_probs * onehot).sum(1)  # log p_y, (B, *spatial)
        focal = -((1.0 - log_p_true.exp()) ** self.gamma) * log_p_true
        return dice_loss + self.focal_weight * focal.flatten(1).mean(1)
