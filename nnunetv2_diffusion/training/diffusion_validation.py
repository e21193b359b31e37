"""The diffusion trainers' final validation runs the global-step diffusion sampler.

nnU-Net's ``nnUNetTrainer.perform_actual_validation`` (end of ``nnUNetv2_train`` and ``--val``) builds its predictor
inline, ``nnUNetPredictor(...)``, from a name it imported at module level, then predicts every validation case with
``predictor.predict_sliding_window_return_logits`` and computes ``validation/summary.json``. There is no factory
hook, and copying its ~150 lines (DDP sharding, cascade next-stage export, metrics, logging) would fork them. So for
the duration of the stock method we rebind that module-level name to :class:`nnUNetDiffusionPredictor` (configured
with the model's stored sampler settings and a fixed seed) and restore it in ``finally``. Everything else is
nnU-Net's code path; ``summary.json`` then holds the Dice of real samples and ``nnUNetv2_find_best_configuration``
can rank diffusion models against stock ones.

The rebinding is process-wide while it lasts: another thread validating a stock trainer at the same moment would get
the diffusion predictor too (nnU-Net never validates two trainers concurrently in one process).
"""

from contextlib import contextmanager

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as stock_trainer_module

from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.networks.wrappers import unwrap_network

VALIDATION_SEED = 0
"""Validation samples are reproducible: the same checkpoint gives the same summary.json."""


@contextmanager
def diffusion_predictor_in_validation(trainer=None):
    """Within the block, nnU-Net's final validation constructs :class:`nnUNetDiffusionPredictor` (sampler, steps and
    eta from the network's stored settings, i.e. the trainer's defaults) instead of ``nnUNetPredictor``."""
    original = stock_trainer_module.nnUNetPredictor

    def validation_predictor(*args, **kwargs) -> nnUNetDiffusionPredictor:
        predictor = nnUNetDiffusionPredictor(*args, seed=VALIDATION_SEED, **kwargs)
        # the noise of a case depends on its fold: the validation of fold f samples what -f f samples
        predictor.folds = [trainer.fold] if trainer is not None else None
        return predictor

    stock_trainer_module.nnUNetPredictor = validation_predictor
    if trainer is not None:
        config = unwrap_network(trainer.network).config
        trainer.print_to_log_file(f"final validation: global-step diffusion sampling, {config.sampler}, "
                                  f"{config.sampling_steps} steps, seed {VALIDATION_SEED}")
    try:
        yield
    finally:
        stock_trainer_module.nnUNetPredictor = original
