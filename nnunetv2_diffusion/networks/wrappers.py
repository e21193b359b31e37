"""How nnU-Net hands networks and their outputs around: wrapped modules and deep-supervision lists."""

from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module that owns the weights inside any nesting of DistributedDataParallel and torch.compile wrappers."""
    while isinstance(network, (DistributedDataParallel, OptimizedModule)):
        network = network.module if isinstance(network, DistributedDataParallel) else network._orig_mod
    return network


def highest_resolution(output):
    """The full-resolution entry of a deep-supervision list (nnU-Net puts it first), or ``output`` itself: works for
    network outputs and for nnU-Net's per-scale targets alike."""
    return output[0] if isinstance(output, (list, tuple)) else output
