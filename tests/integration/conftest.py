"""Integration fixtures: stock nnU-Net command lines as subprocesses on small datasets."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
from synthetic_data import write_raw_dataset  # noqa: E402

BIN = os.path.dirname(sys.executable)


def nnunet_cli_env(root: str, **extra: str) -> dict:
    """Environment for nnU-Net CLIs: folders under ``root``, CPU-friendly process counts, no compile."""
    env = dict(os.environ)
    env.update({"nnUNet_raw": f"{root}/raw", "nnUNet_preprocessed": f"{root}/preprocessed",
                "nnUNet_results": f"{root}/results", "nnUNet_def_n_proc": "2", "nnUNet_compile": "f",
                "OMP_NUM_THREADS": "2", **extra})
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    return env


def run_cli(args: list[str], env: dict, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``<venv>/bin/<args[0]> args[1:]``; on failure the assertion shows the command's last output."""
    result = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def synthetic_2d_dataset(tmp_path_factory):
    """Dataset990_Synthetic (12 train, 2 test, 48x48, 2 foreground classes), planned and preprocessed (2d)."""
    root = str(tmp_path_factory.mktemp("nnunet_synthetic"))
    env = nnunet_cli_env(root)
    write_raw_dataset(env["nnUNet_raw"], 990)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "990", "-c", "2d", "-np", "2", "--verify_dataset_integrity"], env)
    return env
