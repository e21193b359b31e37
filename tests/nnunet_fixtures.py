"""Hand-made nnU-Net plans and trainers for unit tests: no planning, preprocessing or data loading."""

import copy

import torch

_ARCH_2D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def _architecture(dim: int, residual: bool) -> dict:
    arch = copy.deepcopy(_ARCH_2D)
    kwargs = arch["arch_kwargs"]
    if dim == 3:
        kwargs["conv_op"] = "torch.nn.modules.conv.Conv3d"
        kwargs["norm_op"] = "torch.nn.modules.instancenorm.InstanceNorm3d"
        kwargs["kernel_sizes"] = [[3, 3, 3]] * 3
        kwargs["strides"] = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    if residual:
        arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
    return arch


def tiny_plans(dim: int = 2, patch_size: tuple | None = None, residual: bool = False) -> dict:
    """Plans with one configuration ('2d' or '3d_fullres') of a 3-stage U-Net, 8-32 features, as nnU-Net writes."""
    name = "2d" if dim == 2 else "3d_fullres"
    patch = list(patch_size or ((32, 32) if dim == 2 else (16, 16, 16)))
    return {
        "dataset_name": "Dataset999_Unit", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, *patch] if dim == 2 else patch,
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {name: {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dim,
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": _architecture(dim, residual), "batch_dice": True,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0,
                                                              "percentile_00_5": -1.0, "percentile_99_5": 1.0,
                                                              "std": 1.0}},
    }


def dataset_json(num_classes: int = 3, **extra) -> dict:
    return {"channel_names": {"0": "image"}, "labels": {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}},
            "numTraining": 4, "file_ending": ".nii.gz", **extra}


def region_dataset_json() -> dict:
    """Two nested regions as in BraTS: 'whole' = labels {1, 2}, 'core' = label {2}, painted in that order."""
    return dataset_json(labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])


def ignore_dataset_json(num_classes: int = 3) -> dict:
    """``num_classes`` classes and nnU-Net's ignore label, id ``num_classes`` (the highest)."""
    labels = {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}, "ignore": num_classes}
    return dataset_json(labels=labels)


def cascade_plans() -> dict:
    """Tiny 3D plans with nnU-Net's cascade: '3d_lowres' (next stage '3d_cascade_fullres') and '3d_cascade_fullres'
    (previous stage '3d_lowres', the one-hot previous segmentation as extra input channels)."""
    plans = tiny_plans(dim=3)
    full = plans["configurations"]["3d_fullres"]
    plans["configurations"]["3d_lowres"] = {**copy.deepcopy(full), "data_identifier": "nnUNetPlans_3d_lowres",
                                            "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return plans


def make_trainer(trainer_class, dim: int = 2, num_classes: int = 3, deep_supervision: bool = True,
                 labels_json: dict | None = None, plans: dict | None = None, configuration: str | None = None,
                 **plans_kwargs):
    """A trainer with network, optimiser and loss set up as ``initialize()`` would, on CPU, without data.
    ``labels_json``: the dataset.json (default: ``num_classes`` exclusive classes); ``plans`` and ``configuration``
    (default: :func:`tiny_plans` and its one configuration). Needs the nnU-Net folder environment variables (see the
    ``nnunet_env`` fixture)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans = copy.deepcopy(plans) if plans is not None else tiny_plans(dim, **plans_kwargs)
    plans["continue_training"] = False
    configuration = configuration or next(iter(plans["configurations"]))
    trainer = trainer_class(plans, configuration, 0, labels_json or dataset_json(num_classes), torch.device("cpu"))
    trainer.enable_deep_supervision = deep_supervision
    trainer.num_input_channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                                              trainer.dataset_json)
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                         trainer.num_input_channels,
                                                         trainer.label_manager.num_segmentation_heads,
                                                         deep_supervision)
    if hasattr(trainer, "record_label_space"):  # what the diffusion trainers' initialize() adds
        trainer.record_label_space(trainer.network)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    return trainer


def random_batch(trainer, batch_size: int = 2, seed: int = 0) -> dict:
    """A batch as nnU-Net's loader gives it: data (B, input channels, *patch), target list per deep-supervision
    scale. Targets
    are label ids (B, 1, *patch), the ignore label included if the dataset has one, or nnU-Net's region target
    (B, R, *patch) in {0, 1} for region datasets."""
    generator = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    manager = trainer.label_manager
    num_values = manager.num_segmentation_heads + manager.has_ignore_label if not manager.has_regions else 3
    labels = torch.randint(0, num_values, (batch_size, 1, *patch), generator=generator).float()
    data = torch.randn((batch_size, trainer.num_input_channels, *patch), generator=generator) + labels
    if manager.has_regions:  # nnU-Net's ConvertSegmentationToRegionsTransform of labels {0, 1, 2}
        labels = torch.cat([torch.isin(labels, torch.tensor(region, dtype=labels.dtype))
                            for region in manager.foreground_regions], dim=1)  # bool, as nnU-Net's transform gives
    if not trainer.enable_deep_supervision:
        return {"data": data, "target": labels}
    targets = [labels]
    for scale in trainer._get_deep_supervision_scales()[1:]:
        size = [round(p * s) for p, s in zip(patch, scale, strict=True)]
        targets.append(torch.nn.functional.interpolate(labels.float(), size=size, mode="nearest").to(labels.dtype))
    return {"data": data, "target": targets}
