"""Builds the time-conditioned network from nnU-Net plans."""

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet


def build_diffusion_network(configuration_manager: ConfigurationManager, num_image_channels: int, num_classes: int,
                            config: DiffusionConfig, enable_deep_supervision: bool = True) -> DiffusionSegmentationUNet:
    """The planned architecture (same class, stages, features, kernels as the stock model) with
    ``num_image_channels + C (+ C)`` inputs, wrapped with the timestep embedding."""
    extra_channels = num_classes * (2 if config.self_conditioning else 1)
    unet = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_image_channels + extra_channels,
        num_classes,
        allow_init=True,
        deep_supervision=enable_deep_supervision,
    )
    return DiffusionSegmentationUNet(unet, num_image_channels=num_image_channels, num_classes=num_classes,
                                     config=config)
