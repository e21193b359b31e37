"""kill -9 during training, then ``nnUNetv2_train --c`` resumes from the last checkpoint with nothing lost."""

import os
import re
import signal
import subprocess
import time

import pytest
from conftest import BIN, run_cli
from ext_trainers.kill_test_trainers import momentum_total

from nnunetv2_diffusion.checkpoint_io import load_checkpoint_file

TRAINER = "nnUNetTrainerDiffRecycle_KillTest"
EXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


@pytest.mark.integration
def test_training_killed_between_checkpoints_resumes_with_same_epochs_and_optimizer(synthetic_2d_dataset):
    env = {**synthetic_2d_dataset, "nnUNet_extTrainer": EXT, "nnUNet_n_proc_DA": "0"}
    fold = os.path.join(env["nnUNet_results"], "Dataset990_Synthetic", f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    latest = os.path.join(fold, "checkpoint_latest.pth")
    command = [os.path.join(BIN, "nnUNetv2_train"), "990", "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if os.path.isfile(latest) and load_checkpoint_file(latest)["current_epoch"] >= 2:
                break
            time.sleep(0.2)
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.7)  # land somewhere inside the next epoch, possibly inside a checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not os.path.exists(os.path.join(fold, "checkpoint_final.pth"))
    saved = load_checkpoint_file(latest)  # loads: never a truncated file
    saved_epoch = saved["current_epoch"]
    assert 2 <= saved_epoch < 6
    assert saved["optimizer_state"]["state"], "optimizer momentum buffers are saved"

    run_cli(["nnUNetv2_train", "990", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c"], env)
    final = load_checkpoint_file(os.path.join(fold, "checkpoint_final.pth"))
    assert final["current_epoch"] == 6
    logs = [os.path.join(fold, f) for f in os.listdir(fold) if f.startswith("training_log")]
    resumed_log = open(max(logs, key=os.path.getmtime)).read()
    resumed_epochs = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", resumed_log, flags=re.MULTILINE)]
    assert resumed_epochs, resumed_log[-2000:]
    assert resumed_epochs[0] == saved_epoch, "resumed at the epoch after the last checkpoint, not from 0"
    restored = re.findall(r"restored momentum: (\S+)", resumed_log)
    assert restored and float(restored[0]) == pytest.approx(momentum_total(saved["optimizer_state"]), rel=1e-6)
    assert float(restored[0]) > 0
    assert resumed_epochs[-1] == 5
    # the train-loss curve holds every epoch once: the log from before the kill was restored, not restarted
    assert len(final["logging"]["train_losses"]) == 6
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
