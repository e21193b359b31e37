"""'block' conditioning: FiLM on every normalisation output, and an untrained network that is a stock network of the
image; warm start from stock weights reproduces the stock network exactly."""

import pytest
import torch
from nnunet_fixtures import tiny_plans
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.networks import build_diffusion_network
from nnunetv2_diffusion.networks.diffusion_unet import first_convolution

BLOCK = DiffusionConfig(conditioning="block")


def _configuration(dim=2, residual=False):
    plans = tiny_plans(dim, residual=residual)
    return PlansManager(plans).get_configuration(next(iter(plans["configurations"])))


def _stock(configuration, num_classes=3, deep_supervision=False):
    return get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                  configuration.network_arch_init_kwargs_req_import, 1, num_classes,
                                  deep_supervision=deep_supervision)


def _inputs(dim=2, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial = (32, 32) if dim == 2 else (16, 16, 16)
    return (torch.randn(batch, 1, *spatial, generator=generator), 3 * torch.randn(batch, 3, *spatial,
                                                                                  generator=generator))


@pytest.mark.parametrize("dim,residual", [(2, False), (3, False), (2, True)])
def test_every_normalisation_of_encoder_and_decoder_gets_a_film_layer(dim, residual):
    net = build_diffusion_network(_configuration(dim, residual), 1, 3, BLOCK)
    norms = [m for part in (net.unet.encoder, net.unet.decoder.stages) for m in part.modules()
             if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert len(net.film) == len({id(m) for m in norms}) >= len(net.unet.encoder.stages) + len(net.unet.decoder.stages)
    assert [layer.out_features for layer in net.film] == [2 * m.num_features for m in dict.fromkeys(norms)]


@pytest.mark.parametrize("residual", [False, True])
def test_untrained_network_ignores_mask_and_tau_and_is_the_stock_network_of_its_image_weights(residual):
    configuration = _configuration(residual=residual)
    torch.manual_seed(0)
    net = build_diffusion_network(configuration, 1, 3, BLOCK, enable_deep_supervision=False).eval()
    image, x_t = _inputs()
    with torch.no_grad():
        reference = net(image, x_t, torch.tensor([0.2, 0.6]))
        assert torch.equal(net(image, -x_t, torch.tensor([1.0, 0.4])), reference)
        stock = _stock(configuration).eval()
        stock_weights = {k: (v[:, :1] if v.ndim > 2 and v.shape[1] == 4 else v)
                         for k, v in net.unet.state_dict().items()}
        stock.load_state_dict(stock_weights)
        torch.testing.assert_close(stock(image), reference, rtol=0, atol=1e-5)


def test_image_weights_have_the_spread_of_a_stock_first_convolution():
    configuration = _configuration()
    torch.manual_seed(1)
    ours = first_convolution(build_diffusion_network(configuration, 1, 3, BLOCK).unet).weight
    stock = first_convolution(_stock(configuration)).weight
    assert ours[:, 1:].abs().max() == 0
    assert ours[:, :1].std().item() == pytest.approx(stock.std().item(), rel=0.25)


def test_once_trained_the_output_depends_on_tau_and_on_the_mask():
    net = build_diffusion_network(_configuration(), 1, 3, BLOCK, enable_deep_supervision=False)
    image, x_t = _inputs()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # a few steps of any loss that involves the mask and the time move the zeroed weights
        optimizer.zero_grad()
        (net(image, x_t, torch.tensor([0.2, 1.0])) * x_t).mean().backward()
        optimizer.step()
    with torch.no_grad():
        base = net(image, x_t, torch.tensor([0.2, 0.2]))
        assert (net(image, x_t, torch.tensor([1.0, 1.0])) - base).abs().max() > 1e-4
        assert (net(image, -x_t, torch.tensor([0.2, 0.2])) - base).abs().max() > 1e-4


@pytest.mark.parametrize("dim,residual,deep_supervision", [(2, False, False), (3, False, True), (2, True, False)])
def test_warm_start_reproduces_the_stock_network_for_any_mask_and_tau(dim, residual, deep_supervision):
    configuration = _configuration(dim, residual)
    torch.manual_seed(3)
    stock = _stock(configuration, deep_supervision=deep_supervision).eval()
    for conditioning in ("block", "stage"):
        net = build_diffusion_network(configuration, 1, 3, DiffusionConfig(conditioning=conditioning),
                                      deep_supervision).eval()
        net.load_stock_weights(stock.state_dict())
        image, x_t = _inputs(dim)
        with torch.no_grad():
            expected = stock(image)
            for tau in (torch.tensor([0.2, 1.0]), torch.tensor([0.6, 0.6])):
                for mask in (x_t, -x_t, torch.zeros_like(x_t)):
                    outputs = net(image, mask, tau)
                    for ours, theirs in zip(outputs if deep_supervision else [outputs],
                                            expected if deep_supervision else [expected], strict=True):
                        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_warm_start_names_a_weight_of_another_shape():
    stock_configuration = _configuration()
    stock = _stock(stock_configuration, num_classes=2)
    net = build_diffusion_network(stock_configuration, 1, 3, BLOCK)
    with pytest.raises(ValueError, match=r"seg_layers.*shape \(2, \d+, 1, 1\).*\(3, \d+, 1, 1\)"):
        net.load_stock_weights(stock.state_dict())


def test_checkpoints_of_the_other_conditioning_are_refused():
    stage = build_diffusion_network(_configuration(), 1, 3, DiffusionConfig())
    block = build_diffusion_network(_configuration(), 1, 3, BLOCK)
    with pytest.raises(ValueError, match="disagree on conditioning"):
        block.load_state_dict(stage.state_dict())
