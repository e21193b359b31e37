"""Warm start: a diffusion trainer initialised from a trained stock nnU-Net model, through nnU-Net's own
``nnUNetv2_train ... -pretrained_weights <stock checkpoint_final.pth>``.

nnU-Net hands that file to ``nnunetv2.run.run_training.load_pretrained_weights(network, file)``, which requires every
weight of the network to exist with the same shape in the file and skips the segmentation layers: neither holds for a
stock checkpoint and a diffusion network (mask input channels, timestep layers; and the segmentation layers must be
kept to reproduce the stock function). There is no hook for it in the trainer, so a diffusion trainer rebinds that
module-level name, at construction, to :func:`load_pretrained_weights` of this module, which handles its own network
and hands every other network to nnU-Net's function unchanged.
"""

import functools

import nnunetv2.run.run_training as run_training

from nnunetv2_diffusion.checkpoint_io import CheckpointError, load_checkpoint_file
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet, first_convolution
from nnunetv2_diffusion.networks.wrappers import unwrap_network


class WarmStartError(ValueError):
    """A ``-pretrained_weights`` file that does not fit the trainer; names the file and the mismatch."""


def check_stock_checkpoint(checkpoint: dict, path: str, trainer) -> None:
    """The stock model must have been trained for this trainer's configuration, patch size, input channels and
    classes (its plans and network weights tell)."""
    init_args = checkpoint.get("init_args") or {}
    configuration = init_args.get("configuration")
    if configuration is not None and configuration != trainer.configuration_name:
        raise WarmStartError(f"-pretrained_weights {path} was trained for configuration {configuration!r}, this "
                             f"training is {trainer.configuration_name!r}")
    planned = ((init_args.get("plans") or {}).get("configurations") or {}).get(configuration) or {}
    patch = planned.get("patch_size")
    if patch is not None and list(patch) != list(trainer.configuration_manager.patch_size):
        raise WarmStartError(f"-pretrained_weights {path} was trained with patch size {list(patch)}, this training "
                             f"uses {list(trainer.configuration_manager.patch_size)}")
    network = unwrap_network(trainer.network)
    weights = checkpoint["network_weights"]
    first = first_convolution(network.unet).weight
    first_key = next(k for k, v in network.unet.state_dict().items() if v.data_ptr() == first.data_ptr())
    if first_key in weights and weights[first_key].shape[1] != network.num_image_channels:
        raise WarmStartError(f"-pretrained_weights {path} takes {weights[first_key].shape[1]} input channel(s), this "
                             f"dataset has {network.num_image_channels}")
    seg_keys = sorted(k for k in weights if ".seg_layers." in k and k.endswith("weight"))
    if seg_keys and weights[seg_keys[-1]].shape[0] != network.num_classes:
        raise WarmStartError(f"-pretrained_weights {path} predicts {weights[seg_keys[-1]].shape[0]} classes, this "
                             f"dataset has {network.num_classes}")


def load_pretrained_weights(network, fname: str, verbose: bool = False, *, trainer, stock_loader) -> None:
    """nnU-Net's ``load_pretrained_weights`` for the network of ``trainer``: a stock checkpoint warm-starts it
    (:meth:`DiffusionSegmentationUNet.load_stock_weights`), a diffusion checkpoint of the same network loads as is.
    Any other network goes to ``stock_loader``, nnU-Net's own function."""
    module = unwrap_network(network)
    if not isinstance(module, DiffusionSegmentationUNet) or module is not unwrap_network(trainer.network):
        return stock_loader(network, fname, verbose)
    try:
        checkpoint = load_checkpoint_file(fname)
    except CheckpointError as e:
        raise WarmStartError(f"-pretrained_weights: {e}") from None
    weights = checkpoint["network_weights"]
    if "_extra_state" in weights:  # a diffusion checkpoint: the same kind of network
        own = module.config
        try:
            module.load_state_dict(weights)
        except (RuntimeError, ValueError) as e:
            raise WarmStartError(f"-pretrained_weights {fname} does not fit this diffusion network: "
                                 f"{str(e).splitlines()[0]}") from None
        # loading set the checkpoint's diffusion settings; this trainer trains (and its checkpoints record) its own
        loaded, ours, module.config = module.config.to_dict(), own.to_dict(), own
        changed = {k: (v, ours[k]) for k, v in loaded.items() if ours[k] != v}
        trainer.print_to_log_file(f"pretrained diffusion weights loaded from {fname}" + (
            f"; its diffusion settings are replaced by this trainer's (checkpoint vs now: {changed})" if changed
            else ""))
        return
    check_stock_checkpoint(checkpoint, fname, trainer)
    try:
        module.load_stock_weights(weights, f"-pretrained_weights {fname}")
    except ValueError as e:
        raise WarmStartError(str(e)) from None
    trainer.print_to_log_file(f"warm start from the stock model {fname}: every U-Net weight copied, mask-channel "
                              f"weights and timestep layers zero, so training starts from the stock function")


def install_for(trainer) -> None:
    """Makes nnU-Net's ``-pretrained_weights`` path call :func:`load_pretrained_weights` for ``trainer``."""
    current = run_training.load_pretrained_weights
    stock_loader = current.keywords["stock_loader"] if isinstance(current, functools.partial) else current
    run_training.load_pretrained_weights = functools.partial(load_pretrained_weights, trainer=trainer,
                                                             stock_loader=stock_loader)
