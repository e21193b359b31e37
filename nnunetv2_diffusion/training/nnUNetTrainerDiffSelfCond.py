"""Self-conditioning training strategies (Chen et al. 2022, "Analog Bits"; Watson et al. 2023; docs/design.md)."""

import torch

from nnunetv2_diffusion.diffusion.mask_encoding import no_estimate_like
from nnunetv2_diffusion.training.nnUNetTrainerDiff import DiffusionStepOutput, nnUNetTrainerDiff


class nnUNetTrainerDiffSelfCond(nnUNetTrainerDiff):
    """Self-conditioning: the network also sees its previous x0 estimate in C extra input channels.

    At inference each step gets the previous step's m(x0_hat) (zero channels at the first step). Training mimics
    this for half of the samples with a first pass at the same x_t, and trains the other half with zero channels,
    so the model also works without an estimate. Cost per step: 1.5 forwards on average + 1 backward.
    """

    self_conditioning = True
    diffusion_strategy = "self_conditioning"
    self_conditioning_probability = 0.5  # share of samples that get an estimate (Chen et al. 2022: 0.5)

    def diffusion_forward(self, data: torch.Tensor, target) -> DiffusionStepOutput:
        """1. t ~ U{0..T-1}; x_t = q_sample(x0_gt, t, eps).
        2. Per sample, with probability 0.5: first pass, no gradient, with zero estimate channels:
           x0_p = 2 softmax(net(I, x_t, t, zeros)) - 1, kept soft (run only on those samples).
        3. Second pass with gradient on (I, x_t, t, estimate), estimate channels m(x0_p) for the samples of 2 and
           zeros for the others; the shared loss compares it with the ground truth.
        """
        x0 = self.ground_truth_x0(target)
        t, weights = self.sample_timesteps(x0.shape[0])
        x_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        estimate = self._estimate(data, x0, x_t, t)
        return DiffusionStepOutput(self.network(data, x_t, self.tau(t), estimate), t, weights)

    def _estimate(self, data: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The previous-estimate input (B, C, *patch) in [-1, 1]: x0_p for a random half, -1 (zero channels) else."""
        estimate = no_estimate_like(x_t)
        conditioned = torch.rand(x_t.shape[0], device=x_t.device) < self.self_conditioning_probability
        if conditioned.any():
            estimate[conditioned] = self._first_pass(data[conditioned], x0[conditioned], x_t[conditioned],
                                                     t[conditioned])
        return estimate

    def _first_pass(self, data: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Chen et al.: the estimate of the same x_t, from zero estimate channels, without gradient."""
        return self.predict_x0_without_grad(data, x_t, t)


class nnUNetTrainerDiffSelfCondNext(nnUNetTrainerDiffSelfCond):
    """Self-conditioning as Watson et al. 2023 (RFdiffusion) train it: the estimate comes from the step before,
    i.e. from the ground truth noised to t + 1 (independent noise), as the previous sampling step would give it.
    t ~ U{0..T-2} so that t + 1 is a timestep. Same cost as :class:`nnUNetTrainerDiffSelfCond`.
    """

    diffusion_strategy = "self_conditioning_next"

    @property
    def num_loss_timesteps(self) -> int:
        return self.num_diffusion_timesteps - 1

    def _first_pass(self, data: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The estimate of x_{t+1} = q_sample(x0_gt, t + 1, eps''), from zero estimate channels, without gradient."""
        x_next = self.diffusion.q_sample(x0, t + 1, torch.randn_like(x0))
        return self.predict_x0_without_grad(data, x_next, t + 1)
