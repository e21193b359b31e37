"""Checkpoints are written atomically, load weights-only with clear errors, and NaN losses stop training."""

import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from nnunet_fixtures import make_trainer, random_batch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.checkpoint_io import CheckpointError, load_checkpoint_file
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle
from nnunetv2_diffusion.training.loss_guard import MAX_SKIPPED_STEPS, NonFiniteLossError


@pytest.fixture
def trainer():
    trainer = make_trainer(nnUNetTrainerDiffRecycle)
    trainer.inference_allowed_mirroring_axes = (0, 1)
    trainer.logger.log("train_losses", np.mean([np.float32(0.5)]), 0)  # numpy scalars, as nnU-Net logs them
    trainer._best_ema = np.float64(0.25)
    return trainer


def test_round_trip_restores_weights_optimiser_log_and_epoch(trainer, tmp_path):
    # what --c needs to continue where it stopped (the diffusion settings' round trip: test_strategy_options.py)
    trainer.train_step(random_batch(trainer))
    trainer.current_epoch = 3
    path = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    fresh = make_trainer(nnUNetTrainerDiffRecycle)
    fresh.load_checkpoint(path)
    assert fresh.current_epoch == 4  # nnU-Net stores epoch + 1
    for a, b in zip(trainer.network.state_dict().values(), fresh.network.state_dict().values(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    saved, restored = trainer.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["state"] and saved["state"].keys() == restored["state"].keys()  # one SGD step: momentum buffers
    for key, state in saved["state"].items():
        assert torch.equal(state["momentum_buffer"], restored["state"][key]["momentum_buffer"])
    assert fresh._best_ema == 0.25 and fresh.inference_allowed_mirroring_axes == (0, 1)
    assert fresh.logger.get_value("train_losses", step=0) == 0.5


def test_a_crash_during_saving_keeps_the_previous_checkpoint_whole(trainer, tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_best.pth")
    trainer.save_checkpoint(path)
    before = open(path, "rb").read()

    def dying_save(obj, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside, as far as the file system is concerned

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    assert open(path, "rb").read() == before
    assert [f for f in os.listdir(tmp_path) if "checkpoint" in f] == ["checkpoint_best.pth"]  # no partial file


def test_checkpoint_holds_exactly_the_entries_nnunet_writes(trainer, tmp_path):
    ours, stock = str(tmp_path / "ours.pth"), str(tmp_path / "stock.pth")
    trainer.save_checkpoint(ours)
    nnUNetTrainer.save_checkpoint(trainer, stock)  # nnU-Net's own method on the same trainer state
    mine, theirs = load_checkpoint_file(ours), torch.load(stock, weights_only=False)
    assert mine.keys() == theirs.keys()
    for key in ("current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "_best_ema",
                "logging", "grad_scaler_state"):
        assert mine[key] == theirs[key], key
    assert mine["optimizer_state"]["param_groups"] == theirs["optimizer_state"]["param_groups"]
    for a, b in zip(mine["network_weights"].values(), theirs["network_weights"].values(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_save(trainer, tmp_path):
    path = str(tmp_path / "checkpoint_latest.pth")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a finished process: its pid no longer exists
    stale, live = f"{path}.partial-{dead.pid}", f"{path}.partial-{os.getppid()}"
    for name in (stale, live):
        with open(name, "wb") as f:
            f.write(b"half a checkpoint")
    trainer.save_checkpoint(path)
    assert not os.path.exists(stale)
    assert os.path.exists(live)  # another process that is still running may be writing it
    assert load_checkpoint_file(path)["current_epoch"] == trainer.current_epoch + 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_gives_one_clear_error_naming_the_file(trainer, tmp_path, damage):
    path = str(tmp_path / "checkpoint_final.pth")
    trainer.save_checkpoint(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncate" else b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="checkpoint_final.pth cannot be loaded safely"):
        trainer.load_checkpoint(path)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"network_weights": {}, "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint_file(path)
    with pytest.raises(pickle.UnpicklingError):  # the payload is refused before anything runs
        torch.load(path, weights_only=True)


def test_a_checkpoint_pickled_under_numpy_1_loads(tmp_path):
    """NumPy 1.x pickles its scalars as numpy.core.multiarray.scalar (NumPy 2: numpy._core): stock models trained
    before NumPy 2 must still load for -pretrained_weights and --ensemble_with."""
    path = tmp_path / "numpy1.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "_best_ema": np.float64(0.25)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {info: archive.read(info.filename) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries.items():
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(info, data)
    checkpoint = load_checkpoint_file(str(path))
    assert checkpoint["_best_ema"] == 0.25 and torch.equal(checkpoint["network_weights"]["w"], torch.ones(2))


def test_missing_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an nnU-Net checkpoint"):
        load_checkpoint_file(str(tmp_path / "other.pth"))


def test_non_finite_loss_stops_training_naming_epoch_and_iteration(trainer):
    trainer.current_epoch = 7
    trainer._iteration_in_epoch = 12
    batch = random_batch(trainer)
    # a diverging run (NaN images are refused before the network sees them)
    trainer.loss = lambda output, target: output[0].sum() * float("nan")
    weights = [p.detach().clone() for p in trainer.network.parameters()]
    with pytest.raises(NonFiniteLossError, match="epoch 7, iteration 12"):
        trainer.train_step(batch)
    # NaN never applied, and no optimiser step taken (its momentum would carry the NaN into the next step)
    assert not trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.network.parameters(), strict=True))


def test_under_mixed_precision_a_few_non_finite_losses_are_skipped_like_stock(trainer):
    """fp16 forward passes can overflow once; stock nnU-Net's GradScaler skips that step."""
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batch = random_batch(trainer)
    finite_loss = trainer.loss
    trainer.loss = lambda output, target: output[0].sum() * float("nan")
    weights = [p.detach().clone() for p in trainer.network.parameters()]
    for skipped in range(1, MAX_SKIPPED_STEPS):
        assert np.isnan(trainer.train_step(batch)["loss"]) and trainer._skipped_in_a_row == skipped
    assert not trainer.optimizer.state_dict()["state"]  # no step taken
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.network.parameters(), strict=True))
    with pytest.raises(NonFiniteLossError, match=f"the {MAX_SKIPPED_STEPS}th in a row"):
        trainer.train_step(batch)
    trainer.loss = finite_loss  # a finite step resets the count
    trainer._skipped_in_a_row = MAX_SKIPPED_STEPS - 1
    assert np.isfinite(trainer.train_step(batch)["loss"]) and trainer._skipped_in_a_row == 0
