"""Each strategy's checker accepts its own trainer and rejects every other strategy's training step, so a trainer
whose step were replaced by another strategy's would fail its tests."""

import pytest
from nnunet_fixtures import make_trainer
from strategy_checks import (
    check_self_conditioning,
    check_self_conditioning_next,
    check_standard,
    check_xT_recycling,
    check_xt_recycling,
)

from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycleNext,
    nnUNetTrainerDiffSelfCond,
    nnUNetTrainerDiffSelfCondNext,
)

CHECKS = {
    nnUNetTrainerDiff: check_standard,
    nnUNetTrainerDiffSelfCond: check_self_conditioning,
    nnUNetTrainerDiffSelfCondNext: check_self_conditioning_next,
    nnUNetTrainerDiffRecycleNext: check_xt_recycling,
    nnUNetTrainerDiffRecycle: check_xT_recycling,
}


@pytest.mark.parametrize("trainer_class", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_strategy_does_what_its_checker_says(trainer_class, seed):
    CHECKS[trainer_class](make_trainer(trainer_class), seed)


@pytest.mark.parametrize("checked_class", CHECKS, ids=lambda c: c.__name__)
def test_each_checker_rejects_every_other_strategy(checked_class):
    for other_class in CHECKS:
        if other_class is checked_class:
            continue
        with pytest.raises(AssertionError):
            CHECKS[checked_class](make_trainer(other_class))
        assert other_class.diffusion_strategy != checked_class.diffusion_strategy
