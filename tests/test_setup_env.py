"""scripts/setup_env.sh refuses up front, with one clear line, when the disk cannot hold torch."""
import os
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup_env.sh"


def test_setup_refuses_a_disk_too_small_for_torch_before_creating_anything(tmp_path):
    venv = tmp_path / "new" / "venv"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(NNUNETV2_DIFFUSION_VENV=str(venv), NNUNETV2_DIFFUSION_MIN_FREE_GIB=str(10**9))
    result = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    error = result.stderr.strip()
    assert error.startswith("[setup] error:") and len(error.splitlines()) == 1
    assert f"into {venv} needs about {10**9} GiB free" in error
    assert f"the disk holding {tmp_path} has" in error
    assert not (tmp_path / "new").exists()
