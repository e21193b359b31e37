"""The earlier "xt-recycling" training strategy (Fu et al. 2023, arXiv 2303.06040; docs/design.md)."""

import torch

from nnunetv2_diffusion.training.nnUNetTrainerDiff import DiffusionStepOutput, nnUNetTrainerDiff


class nnUNetTrainerDiffRecycleNext(nnUNetTrainerDiff):
    """xt-recycling: the noisy input at t is built from the model's prediction one step earlier, at t + 1, where
    the input is still the ground truth noised by the forward process.

    Unlike xT-recycling (:class:`nnUNetTrainerDiffRecycle`) the first pass sees the ground truth, so the recycled
    estimate is better than anything the model has at inference for large t. Kept for the paper's comparison.
    Cost per step: 2 forwards + 1 backward.
    """

    diffusion_strategy = "xt_recycling"

    @property
    def num_loss_timesteps(self) -> int:
        return self.num_diffusion_timesteps - 1  # t in [0, T-2], so t + 1 is a timestep

    def diffusion_forward(self, data: torch.Tensor, target) -> DiffusionStepOutput:
        """1. t ~ U{0..T-2}.
        2. x_{t+1} = q_sample(x0_gt, t + 1, eps), from the ground truth.
        3. First pass, no gradient: x0_p = 2 softmax(net(I, x_{t+1}, t + 1)) - 1, kept soft.
        4. x_t = sqrt(abar_t) x0_p + sqrt(1 - abar_t) eps'.
        5. Second pass with gradient on (I, x_t, t); the shared loss compares it with the ground truth.
        """
        x0 = self.ground_truth_x0(target)
        t, weights = self.sample_timesteps(x0.shape[0])
        x_next = self.diffusion.q_sample(x0, t + 1, torch.randn_like(x0))
        x0_recycled = self.predict_x0_without_grad(data, x_next, t + 1)
        x_t = self.diffusion.q_sample(x0_recycled, t, torch.randn_like(x0_recycled))
        return DiffusionStepOutput(self.network(data, x_t, self.tau(t)), t, weights)
