"""Shared fixtures: every test gets its own nnU-Net folders, and nnU-Net and torch run single-threaded on CPU."""

import pytest
import torch


@pytest.fixture(autouse=True)
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's raw/preprocessed/results folders in the test's temporary directory."""
    roots = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
        roots[name] = folder
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "f")
    return roots


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Unit-test tensors are tiny; on a shared 2-core machine a second OpenMP thread waiting for a busy core made the
    training tests ~15 times slower (measured: 250 s instead of 15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
