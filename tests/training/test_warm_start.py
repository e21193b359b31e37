"""nnUNetv2_train -pretrained_weights <stock checkpoint>: the diffusion network starts as the stock network."""

import os

import pytest
import torch
from nnunet_fixtures import make_trainer
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_diffusion.networks.wrappers import unwrap_network
from nnunetv2_diffusion.training import (
    nnUNetTrainerDiff,
    nnUNetTrainerDiffRecycle,
    nnUNetTrainerDiffRecycle_blockFiLM,
    nnUNetTrainerDiffRecycle_T10,
)
from nnunetv2_diffusion.training.warm_start import WarmStartError


def _stock_checkpoint(tmp_path, **trainer_kwargs) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(5)
    stock = make_trainer(nnUNetTrainer, deep_supervision=False, **trainer_kwargs)
    stock.inference_allowed_mirroring_axes = (0, 1)
    path = os.path.join(tmp_path, "stock_checkpoint_final.pth")
    checkpoint = {"network_weights": stock.network.state_dict(), "init_args": stock.my_init_kwargs,
                  "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1)}
    torch.save(checkpoint, path)
    return path, stock.network.eval()


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiffRecycle_blockFiLM, nnUNetTrainerDiffRecycle])
def test_stock_commands_warm_start_load_the_stock_function(tmp_path, trainer_class):
    path, stock = _stock_checkpoint(tmp_path)
    trainer = make_trainer(trainer_class, deep_supervision=False)
    maybe_load_checkpoint(trainer, continue_training=False, validation_only=False, pretrained_weights_file=path)
    network = trainer.network.eval()
    image = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = stock(image)
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            mask = 4 * torch.randn(2, 3, 32, 32, generator=generator)
            tau = torch.rand(2, generator=generator).clamp_min(0.05)
            torch.testing.assert_close(network(image, mask, tau), expected, rtol=0, atol=1e-5)


def test_stock_networks_still_load_with_nnunets_own_function(tmp_path):
    path, stock = _stock_checkpoint(tmp_path)
    make_trainer(nnUNetTrainerDiffRecycle_blockFiLM, deep_supervision=False)  # installs the diffusion loader
    other = make_trainer(nnUNetTrainer, deep_supervision=False)
    maybe_load_checkpoint(other, False, False, path)  # nnU-Net's loader: all but the segmentation layers
    for key, value in stock.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(other.network.state_dict()[key], value), key


@pytest.mark.parametrize("stock_kwargs,message", [
    ({"num_classes": 2}, "predicts 2 classes, this dataset has 3"),
    ({"patch_size": (48, 48)}, r"patch size \[48, 48\], this training uses \[32, 32\]"),
])
def test_a_stock_model_of_other_classes_or_patch_size_is_refused(tmp_path, stock_kwargs, message):
    path, _ = _stock_checkpoint(tmp_path, **stock_kwargs)
    trainer = make_trainer(nnUNetTrainerDiffRecycle_blockFiLM, deep_supervision=False)
    with pytest.raises(WarmStartError, match=message):
        maybe_load_checkpoint(trainer, False, False, path)


def test_a_stock_model_of_another_configuration_or_channels_is_refused(tmp_path):
    path, _ = _stock_checkpoint(tmp_path, dim=3)
    trainer = make_trainer(nnUNetTrainerDiffRecycle_blockFiLM, deep_supervision=False)
    with pytest.raises(WarmStartError, match="configuration '3d_fullres', this training is '2d'"):
        maybe_load_checkpoint(trainer, False, False, path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["init_args"]["configuration"] = "2d"
    checkpoint["init_args"]["plans"]["configurations"]["2d"] = {"patch_size": [32, 32]}
    torch.save(checkpoint, path)
    with pytest.raises(WarmStartError, match=f"{path}: weight .* has shape"):  # 3D kernels under a 2d name
        maybe_load_checkpoint(trainer, False, False, path)


def test_a_stock_model_of_other_input_channels_is_refused(tmp_path):
    path, _ = _stock_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=False)
    first = next(k for k, v in checkpoint["network_weights"].items() if v.ndim == 4)
    assert "stages.0." in first  # the first convolution, the one that reads the image channels
    checkpoint["network_weights"][first] = checkpoint["network_weights"][first].repeat(1, 2, 1, 1)
    torch.save(checkpoint, path)
    trainer = make_trainer(nnUNetTrainerDiffRecycle_blockFiLM, deep_supervision=False)
    with pytest.raises(WarmStartError, match=r"takes 2 input channel\(s\), this dataset has 1"):
        maybe_load_checkpoint(trainer, False, False, path)


def test_a_diffusion_checkpoint_gives_its_weights_but_not_its_settings(tmp_path):
    """Fine-tuning a T = 5 'standard' model with T = 10 recycling trains, and records, T = 10 recycling."""
    torch.manual_seed(2)
    source = make_trainer(nnUNetTrainerDiff, deep_supervision=False)
    path = os.path.join(tmp_path, "diffusion_checkpoint_final.pth")
    torch.save({"network_weights": source.network.state_dict(), "init_args": source.my_init_kwargs,
                "trainer_name": "nnUNetTrainerDiff"}, path)
    trainer = make_trainer(nnUNetTrainerDiffRecycle_T10, deep_supervision=False)
    own = unwrap_network(trainer.network).config
    maybe_load_checkpoint(trainer, continue_training=False, validation_only=False, pretrained_weights_file=path)
    network = unwrap_network(trainer.network)
    assert network.config == own and own.num_timesteps == 10 and own != unwrap_network(source.network).config
    assert network.get_extra_state()["num_timesteps"] == 10  # what its checkpoints will record
    for key, value in source.network.state_dict().items():
        if key != "_extra_state":
            assert torch.equal(trainer.network.state_dict()[key], value), key


def test_a_diffusion_checkpoint_of_another_conditioning_is_refused_naming_it(tmp_path):
    source = make_trainer(nnUNetTrainerDiffRecycle, deep_supervision=False)  # 'stage' conditioning
    path = os.path.join(tmp_path, "stage_checkpoint_final.pth")
    torch.save({"network_weights": source.network.state_dict(), "init_args": source.my_init_kwargs,
                "trainer_name": "nnUNetTrainerDiffRecycle"}, path)
    trainer = make_trainer(nnUNetTrainerDiffRecycle_blockFiLM, deep_supervision=False)
    with pytest.raises(WarmStartError, match=f"-pretrained_weights {path} does not fit this diffusion network: "
                                             f"checkpoint and network disagree on conditioning"):
        maybe_load_checkpoint(trainer, False, False, path)
