"""Our real training step under DistributedDataParallel: 2 CPU processes with the gloo backend.

nnU-Net's DDP hard-codes NCCL (GPU only): nnUNetv2_train -num_gpus N spawns N processes, each builds its trainer after
``init_process_group`` and wraps the network in DDP in ``initialize()``. Here each process builds its trainer after
``init_process_group('gloo')`` (so it is built as nnU-Net builds it under DDP: DDP-aware loss, per-rank seed), moves
it back to the CPU and wraps the network in DDP itself, the seam that replaces nnU-Net's NCCL set-up. Every rank
trains on the same batch, so the ranks differ only in the randomness they draw.
"""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunet_fixtures import make_trainer, random_batch

from nnunetv2_diffusion.diffusion.timestep_samplers import ImportanceTimestepSampler
from nnunetv2_diffusion.training import (
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_importance,
    nnUNetTrainerDiffSelfCond,
)
from nnunetv2_diffusion.training.distributed import gather_from_all_ranks

WORLD_SIZE = 2
BATCH_SIZE = 2  # per rank
IMPORTANCE_STEPS = 2
STRATEGIES = {nnUNetTrainerDiffRecycle_importance: IMPORTANCE_STEPS, nnUNetTrainerDiffRecycle: 1,
              nnUNetTrainerDiffSelfCond: 1}  # trainer class -> training steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_process(rank: int, port: int, folder: str) -> None:
    """One DDP rank: runs every strategy's steps and saves what the parent checks to ``folder/rank{rank}.pt``."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.path.join(folder, f"rank{rank}", name), exist_ok=True)
        os.environ[name] = os.path.join(folder, f"rank{rank}", name)
    os.environ.update(nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0", nnUNet_compile="f",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 busy cores: a second OpenMP thread per process only waits (tests/conftest.py)
    # CUDA's default generators start from the same fixed seed in every process; seed the CPU ranks alike to match
    torch.manual_seed(0)
    # a short timeout: a mismatched collective fails the test instead of hanging it for 30 min
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    results = {"gathered": gather_from_all_ranks(*_uneven_pairs(rank))}
    try:
        for trainer_class, steps in STRATEGIES.items():
            results[trainer_class.__name__] = _train(trainer_class, steps)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))


def _uneven_pairs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's (t, losses): r + 2 pairs, as nnU-Net's uneven split of the global batch gives them."""
    t = torch.arange(rank + 2) + 10 * rank
    return t, t.float() / 4


def _train(trainer_class, steps: int) -> dict:
    trainer = make_trainer(trainer_class, deep_supervision=True)
    assert trainer.is_ddp
    # nnU-Net puts a DDP trainer on cuda:rank; the seam puts it back on the CPU (no GradScaler there)
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None
    # DDP broadcasts rank 0's weights; with find_unused_parameters=False (the default) it raises at the next step
    # if a parameter went unused (checked after one step by "without_grad")
    trainer.network = torch.nn.parallel.DistributedDataParallel(trainer.network)
    initial = {k: v.detach().clone() for k, v in trainer.network.module.named_parameters()}
    noisy_masks, loss_inputs, losses = [], [], []
    trainer.network.module.register_forward_pre_hook(lambda _, args: noisy_masks.append(args[1].detach().clone()))
    diffusion_loss = trainer.diffusion_loss

    def recording_loss(step, target):
        loss_inputs.append({"t": step.t.clone(), "output": [level.detach().clone() for level in step.output]})
        return diffusion_loss(step, target)

    trainer.diffusion_loss = recording_loss
    batch = random_batch(trainer, batch_size=BATCH_SIZE, seed=0)
    for _ in range(steps):
        losses.append(float(trainer.train_step(batch)["loss"]))
    return {
        "losses": losses,
        "noisy_masks": noisy_masks,  # every network call's x_t, (B, C, *patch)
        "loss_inputs": loss_inputs,  # per step: t (B,) and the deep-supervision outputs of the pass with gradient
        "initial_parameters": initial,
        "parameters": {k: v.detach().clone() for k, v in trainer.network.module.named_parameters()},
        "without_grad": [n for n, p in trainer.network.module.named_parameters() if p.grad is None],
        "sampler_state": trainer.timestep_sampler.state_dict() if trainer.timestep_sampling != "uniform" else None,
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results, {trainer class name: {...}} per rank."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_process, args=(_free_port(), str(folder)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def test_gather_concatenates_uneven_batches_in_rank_order(ranks):
    expected_t = torch.cat([_uneven_pairs(rank)[0] for rank in range(WORLD_SIZE)])
    expected_losses = torch.cat([_uneven_pairs(rank)[1] for rank in range(WORLD_SIZE)]).double()
    for rank in ranks:
        t, losses = rank["gathered"]
        assert torch.equal(t, expected_t) and torch.equal(losses, expected_losses)


@pytest.mark.parametrize("trainer_class", STRATEGIES, ids=lambda c: c.__name__)
def test_ranks_end_with_identical_weights(ranks, trainer_class):
    first, second = (rank[trainer_class.__name__] for rank in ranks)
    for name, value in first["parameters"].items():
        assert torch.equal(value, second["parameters"][name]), name
    # and the optimiser did step: equal weights are not just DDP's broadcast of rank 0's initial weights
    assert any(not torch.equal(value, first["initial_parameters"][name])
               for name, value in first["parameters"].items())


@pytest.mark.parametrize("trainer_class", STRATEGIES, ids=lambda c: c.__name__)
def test_ranks_draw_different_noise_on_the_same_batch(ranks, trainer_class):
    first, second = (rank[trainer_class.__name__]["noisy_masks"] for rank in ranks)
    # the last call is the pass with gradient; its x_t covers the whole batch on every strategy
    assert not torch.allclose(first[-1], second[-1])
    if trainer_class is not nnUNetTrainerDiffSelfCond:  # recycling: the first pass starts from pure noise
        assert not torch.allclose(first[0], second[0])


@pytest.mark.parametrize("trainer_class", STRATEGIES, ids=lambda c: c.__name__)
def test_loss_is_finite_on_every_rank(ranks, trainer_class):
    for rank in ranks:
        losses = torch.tensor(rank[trainer_class.__name__]["losses"])
        assert len(losses) == STRATEGIES[trainer_class] and torch.isfinite(losses).all()


@pytest.mark.parametrize("trainer_class", STRATEGIES, ids=lambda c: c.__name__)
def test_every_parameter_gets_a_gradient(ranks, trainer_class):
    # under DDP nnU-Net gives the lowest deep-supervision output a weight of 1e-6 instead of 0 so this holds
    assert ranks[0][trainer_class.__name__]["without_grad"] == []


def test_importance_samplers_hold_every_ranks_samples_in_the_same_state(ranks):
    name = nnUNetTrainerDiffRecycle_importance.__name__
    first, second = (rank[name]["sampler_state"] for rank in ranks)
    assert torch.equal(first["counts"], second["counts"])
    assert torch.equal(first["loss_sq_ema"], second["loss_sq_ema"])
    assert int(first["counts"].sum()) == WORLD_SIZE * BATCH_SIZE * IMPORTANCE_STEPS


def test_importance_samplers_learn_each_samples_own_loss_in_rank_order(ranks):
    """Replays both ranks' steps in one process: each sample's loss alone, rank 0's before rank 1's per step."""
    name = nnUNetTrainerDiffRecycle_importance.__name__
    trainer = make_trainer(nnUNetTrainerDiffRecycle_importance, deep_supervision=True)
    target = random_batch(trainer, batch_size=BATCH_SIZE, seed=0)["target"]
    expected = ImportanceTimestepSampler(num_timesteps=trainer.num_loss_timesteps)
    for step in range(IMPORTANCE_STEPS):
        for rank in ranks:
            recorded = rank[name]["loss_inputs"][step]
            with torch.no_grad():
                expected.update(recorded["t"], trainer.per_sample_loss(recorded["output"], target))
    state = ranks[0][name]["sampler_state"]
    assert torch.equal(state["counts"], expected.state_dict()["counts"])
    # single-process nnU-Net weights the lowest output 0 instead of DDP's 1e-6
    assert torch.allclose(state["loss_sq_ema"], expected.state_dict()["loss_sq_ema"], rtol=1e-4)
