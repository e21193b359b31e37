"""Shared fixtures: every test gets its own nnU-Net folders, and nnU-Net runs single-process on CPU."""

import pytest


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
