"""The proposed xT-recycling training strategy (Fu et al., MELBA 2023; docs/design.md)."""

import torch

from nnunetv2_diffusion.training.nnUNetTrainerDiff import DiffusionStepOutput, nnUNetTrainerDiff


class nnUNetTrainerDiffRecycle(nnUNetTrainerDiff):
    """xT-recycling: train on noisy masks built from the model's own prediction from pure noise.

    At inference x_t comes from the model's earlier predictions, not from the ground truth; recycling makes training
    see the same kind of input. Cost per step: 2 forwards + 1 backward.
    """

    diffusion_strategy = "xT_recycling"

    @property
    def num_loss_timesteps(self) -> int:
        return self.num_diffusion_timesteps - 1  # t in [0, T-2]: the first pass owns T-1

    def diffusion_forward(self, data: torch.Tensor, target) -> DiffusionStepOutput:
        """1. t ~ U{0..T-2}.
        2. First pass, no gradient, at the last timestep T-1 from pure noise eps (never from the ground truth: the
           reference code's q_sample(x0, T-1) leaks the mask with weight sqrt(abar_{T-1}) ~ 0.006):
           x0_p = 2 softmax(net(I, eps, T-1)) - 1, kept soft.
        3. x_t = sqrt(abar_t) x0_p + sqrt(1 - abar_t) eps'.
        4. Second pass with gradient on (I, x_t, t); the shared loss compares it with the ground truth.
        """
        batch_size = data.shape[0]
        num_classes = self.label_manager.num_segmentation_heads
        t, weights = self.sample_timesteps(batch_size)
        t_last = torch.full_like(t, self.num_diffusion_timesteps - 1)
        noise = torch.randn((batch_size, num_classes, *data.shape[2:]), device=self.device)
        x0_recycled = self.predict_x0_without_grad(data, noise, t_last)
        x_t = self.diffusion.q_sample(x0_recycled, t, torch.randn_like(x0_recycled))
        return DiffusionStepOutput(self.network(data, x_t, self.tau(t)), t, weights)
