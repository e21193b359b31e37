"""Noise seeds from content, so a sample depends on what is predicted, not on the order or company it comes in."""

import hashlib

import torch

CONTENT_SAMPLE_VALUES = 2**20
"""About this many values (a strided subset, fewer than twice as many) of the content enter the hash: enough to tell
cases apart, cheap."""


def content_seed(data: torch.Tensor, seed: int, *salt) -> int:
    """A 63-bit generator seed from blake2b of (seed, data's shape, *salt) and a strided subset of data's values."""
    flat = data.reshape(-1)
    stride = max(1, flat.numel() // CONTENT_SAMPLE_VALUES)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((seed, tuple(data.shape), *salt)).encode())
    digest.update(flat[::stride].detach().float().cpu().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)
