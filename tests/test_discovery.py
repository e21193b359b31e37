"""How ``nnUNet_extTrainer`` gets our shim folder: appended once, after the user's folders, whatever runs it twice."""

import os
import subprocess
import sys

from nnunetv2_diffusion import discovery


def test_unset_variable_gets_the_shim_folder(monkeypatch):
    monkeypatch.delenv(discovery.ENV_VAR, raising=False)
    discovery.register_ext_trainer_path()
    shim = discovery.ext_trainer_path()
    assert os.environ[discovery.ENV_VAR] == shim
    assert os.path.isfile(os.path.join(shim, "nnunetv2_diffusion_trainers.py"))


def test_second_call_does_not_list_the_folder_twice(monkeypatch):
    monkeypatch.delenv(discovery.ENV_VAR, raising=False)
    discovery.register_ext_trainer_path()
    once = os.environ[discovery.ENV_VAR]
    discovery.register_ext_trainer_path()
    assert os.environ[discovery.ENV_VAR] == once


def test_user_folders_stay_in_front(monkeypatch, tmp_path):
    users = [str(tmp_path / "a"), str(tmp_path / "b")]
    # An empty entry (a trailing separator) must not become a folder nnU-Net searches.
    monkeypatch.setenv(discovery.ENV_VAR, os.pathsep.join(users) + os.pathsep)
    discovery.register_ext_trainer_path()
    discovery.register_ext_trainer_path()
    assert os.environ[discovery.ENV_VAR].split(os.pathsep) == users + [discovery.ext_trainer_path()]


def test_fresh_interpreter_registers_through_the_installed_pth_file():
    """The .pth file must run at start-up; without it stock ``nnUNetv2_train -tr nnUNetTrainerDiffRecycle`` fails."""
    env = {k: v for k, v in os.environ.items() if k != discovery.ENV_VAR}
    listed = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ.get({discovery.ENV_VAR!r}, ''))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert listed.split(os.pathsep) == [discovery.ext_trainer_path()]
