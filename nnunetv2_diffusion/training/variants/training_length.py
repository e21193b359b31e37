"""Short training budgets for every strategy, so demos and benchmarks give all of them the same iterations.

nnU-Net's ``_Xepochs`` variants keep 250 iterations per epoch; these fix the total number of iterations instead,
spread over epochs of 50 so the poly learning-rate schedule, logging and checkpoints still step several times.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycle import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.nnUNetTrainerDiffRecycleNext import nnUNetTrainerDiffRecycleNext
from nnunetv2_diffusion.training.nnUNetTrainerDiffSelfCond import (
    nnUNetTrainerDiffSelfCond,
    nnUNetTrainerDiffSelfCondNext,
)
from nnunetv2_diffusion.training.variants.conditioning import nnUNetTrainerDiffRecycle_blockFiLM


class _FixedBudgetMixin:
    """Sets nnU-Net's schedule attributes from ``budget = (epochs, iterations per epoch, validation iterations)``."""

    budget: tuple[int, int, int]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget
        # nnU-Net writes checkpoint_latest every 50 epochs; with a few short epochs --c would restart from scratch
        self.save_every = 1


class _300IterationsMixin(_FixedBudgetMixin):
    """6 epochs x 50 training iterations, 10 pseudo-validation iterations per epoch."""

    budget = (6, 50, 10)


class _1000IterationsMixin(_FixedBudgetMixin):
    """20 epochs x 50 training iterations, 10 pseudo-validation iterations per epoch: the evidence study's budget."""

    budget = (20, 50, 10)


class _1300IterationsMixin(_FixedBudgetMixin):
    """26 epochs x 50 training iterations: stock nnU-Net at the total budget of a warm start (1000 + 300), so the
    warm start's gain can be told apart from the gain of 300 more iterations."""

    budget = (26, 50, 10)


class _2000IterationsMixin(_FixedBudgetMixin):
    """40 epochs x 50 training iterations: the budget curve's larger point on HC18, whose iterations cost about four
    times Hippocampus's on the CPU."""

    budget = (40, 50, 10)


class _3000IterationsMixin(_FixedBudgetMixin):
    """60 epochs x 50 training iterations: a larger budget of the evidence study's budget curve."""

    budget = (60, 50, 10)


class _5000IterationsMixin(_FixedBudgetMixin):
    """100 epochs x 50 training iterations: the longest point of the budget curve on the CPU and the evidence study's
    GPU budget (benchmarks/gpu_evidence_hc18.sh)."""

    budget = (100, 50, 10)


class _10IterationsMixin(_FixedBudgetMixin):
    """1 epoch x 10 training iterations, 2 pseudo-validation iterations: smoke tests."""

    budget = (1, 10, 2)


class nnUNetTrainer_300iters(_300IterationsMixin, nnUNetTrainer):
    """Stock nnU-Net at the same budget: the non-diffusion anchor of every comparison."""


class nnUNetTrainerDiff_300iters(_300IterationsMixin, nnUNetTrainerDiff):
    pass


class nnUNetTrainerDiffRecycle_300iters(_300IterationsMixin, nnUNetTrainerDiffRecycle):
    pass


class nnUNetTrainerDiffRecycleNext_300iters(_300IterationsMixin, nnUNetTrainerDiffRecycleNext):
    pass


class nnUNetTrainerDiffSelfCond_300iters(_300IterationsMixin, nnUNetTrainerDiffSelfCond):
    pass


class nnUNetTrainerDiffSelfCondNext_300iters(_300IterationsMixin, nnUNetTrainerDiffSelfCondNext):
    pass


class nnUNetTrainer_1000iters(_1000IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainerDiffRecycle_1000iters(_1000IterationsMixin, nnUNetTrainerDiffRecycle):
    pass


class nnUNetTrainer_1300iters(_1300IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainer_2000iters(_2000IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainer_3000iters(_3000IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainer_5000iters(_5000IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_300iters(_300IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_1000iters(_1000IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_2000iters(_2000IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_3000iters(_3000IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_5000iters(_5000IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainerDiffRecycle_blockFiLM_warm300iters(_300IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    """Fine-tuning a stock model (``-pretrained_weights <stock checkpoint_final.pth>``) with recycling for 300
    iterations, from a tenth of nnU-Net's initial learning rate, so the start does not undo what the stock model
    learned (a choice, not a measured optimum)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3


class nnUNetTrainerDiffRecycle_blockFiLM_10iters(_10IterationsMixin, nnUNetTrainerDiffRecycle_blockFiLM):
    pass


class nnUNetTrainer_10iters(_10IterationsMixin, nnUNetTrainer):
    pass


class nnUNetTrainerDiff_10iters(_10IterationsMixin, nnUNetTrainerDiff):
    pass


class nnUNetTrainerDiffRecycle_10iters(_10IterationsMixin, nnUNetTrainerDiffRecycle):
    pass


class nnUNetTrainerDiffRecycleNext_10iters(_10IterationsMixin, nnUNetTrainerDiffRecycleNext):
    pass


class nnUNetTrainerDiffSelfCond_10iters(_10IterationsMixin, nnUNetTrainerDiffSelfCond):
    pass


class nnUNetTrainerDiffSelfCondNext_10iters(_10IterationsMixin, nnUNetTrainerDiffSelfCondNext):
    pass
