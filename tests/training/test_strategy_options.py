"""Trainer options (T, schedule, timestep sampler, loss) and their named variants; the settings a checkpoint
carries; short-budget variants; refusals of invalid combinations."""

import os

import numpy as np
import pytest
import torch
from nnunet_fixtures import dataset_json, make_trainer, random_batch, tiny_plans
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunetv2_diffusion.training as training
from nnunetv2_diffusion.diffusion.schedules import cosine_alphas_cumprod, linear_alphas_cumprod
from nnunetv2_diffusion.diffusion.timestep_samplers import ImportanceTimestepSampler
from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiff_focalDice,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_importance,
    nnUNetTrainerDiffRecycle_T10,
    nnUNetTrainerDiffSelfCond,
)
from nnunetv2_diffusion.training.dice_focal_loss import DiceFocalLoss

STRATEGIES = ["nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond", "nnUNetTrainerDiffRecycleNext",
              "nnUNetTrainerDiffRecycle"]
OPTION_VARIANTS = {"T10": {"num_diffusion_timesteps": 10, "default_sampling_steps": 10},
                   "cosine": {"noise_schedule": "cosine"}, "importance": {"timestep_sampling": "importance"},
                   "focalDice": {"segmentation_loss": "dice_focal"}}


@pytest.mark.parametrize("suffix", OPTION_VARIANTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_option_variant_changes_exactly_its_option(strategy, suffix):
    base, variant = getattr(training, strategy), getattr(training, f"{strategy}_{suffix}")
    assert issubclass(variant, base) and variant.diffusion_forward is base.diffusion_forward
    changed = {k: getattr(variant, k) for k in vars(variant) if not k.startswith("__")}
    assert changed == OPTION_VARIANTS[suffix]


@pytest.mark.parametrize("strategy", STRATEGIES + ["nnUNetTrainerDiffSelfCondNext"])
@pytest.mark.parametrize("budget,epochs,iterations", [("300iters", 6, 50), ("10iters", 1, 10)])
def test_every_strategy_has_short_budget_variants(strategy, budget, epochs, iterations):
    variant = getattr(training, f"{strategy}_{budget}")
    assert issubclass(variant, getattr(training, strategy))
    trainer = _build(variant)
    assert trainer.num_epochs * trainer.num_iterations_per_epoch == epochs * iterations == int(budget[:-5])


@pytest.mark.parametrize("name", ["nnUNetTrainer_1000iters", "nnUNetTrainer_1300iters", "nnUNetTrainer_2000iters",
                                  "nnUNetTrainer_3000iters", "nnUNetTrainer_5000iters",
                                  "nnUNetTrainerDiffRecycle_blockFiLM_1000iters",
                                  "nnUNetTrainerDiffRecycle_blockFiLM_2000iters",
                                  "nnUNetTrainerDiffRecycle_blockFiLM_5000iters"])
def test_evidence_budgets_have_their_iterations_and_checkpoint_every_epoch(name):
    trainer = _build(getattr(training, name))
    assert trainer.num_epochs * trainer.num_iterations_per_epoch == int(name.rsplit("_", 1)[1][:-5])
    assert trainer.save_every == 1  # so --c resumes an interrupted short run instead of restarting it


def test_every_exported_trainer_is_found_by_nnunet_by_name():
    names = set(training.__all__)
    assert len(names) == len(training.__all__)
    for name in ["nnUNetTrainerDiffRecycleNext", "nnUNetTrainerDiffSelfCond", "nnUNetTrainerDiffRecycle_cosine",
                 "nnUNetTrainerDiff_importance", "nnUNetTrainerDiffRecycle_focalDice", "nnUNetTrainerDiff_T10",
                 "nnUNetTrainerDiffSelfCondNext_300iters"]:
        assert name in names
        assert recursive_find_trainer_class_by_name(name) is getattr(training, name)


def test_schedule_and_timestep_options_reach_the_diffusion_and_the_network():
    trainer = make_trainer(nnUNetTrainerDiffRecycle_T10)
    assert torch.equal(trainer.diffusion.alphas_cumprod, linear_alphas_cumprod(10))
    assert trainer.network.config.num_timesteps == 10 and trainer.timestep_sampler.num_timesteps == 9
    cosine = make_trainer(training.nnUNetTrainerDiff_cosine)
    assert torch.equal(cosine.diffusion.alphas_cumprod, cosine_alphas_cumprod(5))
    assert torch.equal(cosine.network.make_sampler().alphas_cumprod, cosine_alphas_cumprod(5))


def test_a_checkpoint_rebuilds_its_own_scheduler_in_a_network_built_with_the_defaults(tmp_path):
    trained_class = type("nnUNetTrainerDiffRecycle_T10cosineUnit", (nnUNetTrainerDiffRecycle_T10,),
                         {"noise_schedule": "cosine"})
    trainer = make_trainer(trained_class)
    trainer.inference_allowed_mirroring_axes = (0, 1)
    path = str(tmp_path / "checkpoint_final.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    default = nnUNetTrainerDiff.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                           False)
    assert default.config.num_timesteps == 5
    default.load_state_dict(checkpoint["network_weights"])
    assert default.config == trainer.network.config
    assert (default.config.num_timesteps, default.config.schedule, default.config.strategy) == (10, "cosine",
                                                                                                "xT_recycling")
    assert torch.equal(default.make_sampler().alphas_cumprod, cosine_alphas_cumprod(10))
    assert default.make_sampler().timesteps.tolist() == list(range(9, -1, -1))
    # inference may take fewer steps than training had timesteps, never more
    assert default.make_sampler(steps=5).timesteps.tolist() == [9, 7, 5, 3, 1]
    with pytest.raises(ValueError, match=r"steps=11 exceeds the 10 timesteps.*\[1, 10\]"):
        default.make_sampler(steps=11)


def test_uniform_sampling_keeps_the_stock_batch_loss():
    trainer = make_trainer(nnUNetTrainerDiff)
    batch = random_batch(trainer)
    torch.manual_seed(0)
    step = trainer.diffusion_forward(batch["data"], batch["target"])
    assert torch.equal(step.weights, torch.ones(2))
    assert torch.equal(trainer.diffusion_loss(step, batch["target"]), trainer.loss(step.output, batch["target"]))


def test_importance_sampling_weights_the_per_sample_loss_by_one_over_p_t_T_and_feeds_it_back():
    trainer = make_trainer(nnUNetTrainerDiffRecycle_importance)
    sampler = trainer.timestep_sampler
    assert isinstance(sampler, ImportanceTimestepSampler) and sampler.num_timesteps == 4  # t in [0, T-2]
    for t in range(4):  # past the uniform warm-up, with larger losses at larger t
        sampler.update(torch.full((10,), t), torch.full((10,), 1.0 + t))
    batch = random_batch(trainer, batch_size=4)
    torch.manual_seed(0)
    step = trainer.diffusion_forward(batch["data"], batch["target"])
    p = sampler.probabilities()
    assert torch.allclose(step.weights.double(), 1.0 / (p[step.t] * 4), atol=1e-6)
    counts = sampler.state_dict()["counts"].clone()
    per_sample = trainer.per_sample_loss(step.output, batch["target"])
    loss = trainer.diffusion_loss(step, batch["target"])
    assert torch.allclose(loss, (step.weights * per_sample).mean())
    assert torch.equal(sampler.state_dict()["counts"] - counts, torch.bincount(step.t, minlength=4))
    one = trainer.loss([o[:1] for o in step.output], [t[:1] for t in batch["target"]])
    assert torch.allclose(per_sample[0], one)


def test_importance_sampler_statistics_survive_a_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(nnUNetTrainerDiffRecycle_importance)
    trainer.inference_allowed_mirroring_axes = (0, 1)
    trainer.timestep_sampler.update(torch.tensor([0, 1, 1, 3]), torch.tensor([0.5, 2.0, 1.0, 0.25]))
    path = str(tmp_path / "checkpoint_latest.pth")
    writes = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(f), real_save(obj, f, *a, **k)))
    trainer.save_checkpoint(path)
    assert len(writes) == 1  # the statistics go into the one atomic write, not a rewrite of the file
    resumed = make_trainer(nnUNetTrainerDiffRecycle_importance)
    resumed.load_checkpoint(path)
    for key, value in trainer.timestep_sampler.state_dict().items():
        assert torch.equal(torch.as_tensor(resumed.timestep_sampler.state_dict()[key]), torch.as_tensor(value))
    assert resumed.timestep_sampler.state_dict()["counts"].sum() == 4


def test_focal_dice_variant_keeps_nnunets_deep_supervision_weights():
    stock = make_trainer(nnUNetTrainerDiff).loss
    paper = make_trainer(nnUNetTrainerDiff_focalDice).loss
    assert isinstance(paper, DeepSupervisionWrapper) and isinstance(paper.loss, DiceFocalLoss)
    assert paper.weight_factors == stock.weight_factors
    assert isinstance(make_trainer(nnUNetTrainerDiff_focalDice, deep_supervision=False).loss, DiceFocalLoss)


def test_dice_focal_loss_values():
    loss = DiceFocalLoss()
    labels = torch.zeros(2, 1, 4, 4)
    labels[0, 0, :2] = 1  # sample 0: classes 0 and 1; sample 1: background only
    perfect = (torch.nn.functional.one_hot(labels[:, 0].long(), 3).permute(0, 3, 1, 2).float() - 0.5) * 200
    assert loss(perfect, labels).item() < 1e-6
    uniform = torch.zeros(2, 3, 4, 4)  # p = 1/3 everywhere
    focal = -((2 / 3) ** 2) * np.log(1 / 3)
    dice_sample0 = 1 - 2 * (8 / 3) / (16 / 3 + 8)  # class 1 only: class 2 is absent and left out
    expected = torch.tensor([dice_sample0 + 20 * focal, 20 * focal], dtype=torch.float32)
    assert torch.allclose(loss.per_sample(uniform, labels), expected, atol=1e-5)


def _build(trainer_class):
    plans = tiny_plans()
    plans["continue_training"] = False
    return trainer_class(plans, "2d", 0, dataset_json(), torch.device("cpu"))


@pytest.mark.parametrize("base,attributes,message", [
    (nnUNetTrainerDiffRecycle, {"self_conditioning": True},
     "self-conditioning is not supported with the 'xT_recycling' strategy"),
    (training.nnUNetTrainerDiffRecycleNext, {"self_conditioning": True},
     "self-conditioning is not supported with the 'xt_recycling' strategy"),
    (nnUNetTrainerDiffSelfCond, {"self_conditioning": False},
     "the 'self_conditioning' strategy needs self_conditioning = True"),
    (nnUNetTrainerDiffSelfCond, {"num_diffusion_timesteps": 1}, "num_timesteps must be >= 2"),
    (nnUNetTrainerDiff, {"noise_schedule": "sigmoid"}, "unknown schedule 'sigmoid'"),
    (nnUNetTrainerDiff, {"timestep_sampling": "stratified"}, "unknown timestep sampler 'stratified'"),
    (nnUNetTrainerDiffRecycle, {"segmentation_loss": "tversky"}, "unknown segmentation loss 'tversky'"),
    (nnUNetTrainerDiff, {"diffusion_strategy": "recycling"}, "unknown training strategy 'recycling'"),
])
def test_invalid_options_are_refused_with_the_trainer_name_before_any_folder_exists(nnunet_env, base, attributes,
                                                                                    message):
    bad_class = type("nnUNetTrainerDiffBadOptions", (base,), attributes)
    with pytest.raises(ValueError, match=f"nnUNetTrainerDiffBadOptions: invalid diffusion settings: {message}"):
        _build(bad_class)
    assert os.listdir(nnunet_env["nnUNet_results"]) == []
