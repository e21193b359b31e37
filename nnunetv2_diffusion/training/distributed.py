"""What a diffusion trainer needs under nnU-Net's DistributedDataParallel (``nnUNetv2_train -num_gpus N``)."""

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn


def gather_from_all_ranks(t: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP (world size > 1): the (t, loss) pairs of every rank, concatenated in rank order and identical on every
    rank, so that every rank's importance sampler holds the same statistics and draws from the same p(t). Without
    distributed training (or with one process): (t, losses) unchanged.

    t: long (B,); losses: float (B,), detached, on the training device (NCCL gathers CUDA tensors only). B may differ
    between ranks (nnU-Net splits the global batch size unevenly). Returns t long (N,) and losses float64 (N,), N the
    sum of all ranks' B.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, losses
    world_size = dist.get_world_size()
    # one collective for both: t < 2^53 is exact in float64, as is a float32 loss
    pairs = torch.stack([t.double(), losses.double()], dim=1)
    sizes = [torch.zeros(1, dtype=torch.int64, device=t.device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([pairs.shape[0]], dtype=torch.int64, device=t.device))
    sizes = [int(size) for size in sizes]
    # all_gather needs the same shape on every rank: pad to the largest batch, cut the padding off afterwards
    padded = pairs.new_zeros((max(sizes), 2))
    padded[:pairs.shape[0]] = pairs
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    pairs = torch.cat([rank_pairs[:size] for rank_pairs, size in zip(gathered, sizes, strict=True)])
    return pairs[:, 0].long(), pairs[:, 1]


@contextmanager
def rank_local_dice(loss):
    """Inside, nnU-Net's batch Dice (``MemoryEfficientSoftDiceLoss`` with ``ddp=True``, which nnU-Net builds under
    DDP) sums its statistics over this rank's samples only instead of all-gathering them from every rank."""
    gathering = [m for m in loss.modules() if getattr(m, "ddp", False)] if isinstance(loss, nn.Module) else []
    for module in gathering:
        module.ddp = False
    try:
        yield
    finally:
        for module in gathering:
            module.ddp = True
