"""The time-conditioned network: shapes, timestep wiring, gradients, stored settings, same topology as stock."""

import pytest
import torch
from nnunet_fixtures import tiny_plans
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.seeding import content_seed
from nnunetv2_diffusion.networks import build_diffusion_network
from nnunetv2_diffusion.networks.diffusion_unet import TILE_SEED


def _configuration(dim: int, residual: bool = False):
    plans = tiny_plans(dim, residual=residual)
    return PlansManager(plans).get_configuration(next(iter(plans["configurations"])))


def _network(dim=2, num_classes=3, deep_supervision=True, residual=False, config=None):
    torch.manual_seed(0)
    return build_diffusion_network(_configuration(dim, residual), 1, num_classes, config or DiffusionConfig(),
                                   deep_supervision)


@pytest.mark.parametrize("dim,residual", [(2, False), (3, False), (2, True)])
def test_output_shapes_with_and_without_deep_supervision(dim, residual):
    spatial = (32, 32) if dim == 2 else (16, 16, 16)
    image, x_t, tau = torch.randn(2, 1, *spatial), torch.randn(2, 3, *spatial), torch.tensor([0.2, 1.0])
    outputs = _network(dim, residual=residual)(image, x_t, tau)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *[s // f for s in spatial]) for f in (1, 2)]
    single = _network(dim, deep_supervision=False, residual=residual)(image, x_t, tau)
    assert single.shape == (2, 3, *spatial)


def test_same_topology_as_the_stock_network_apart_from_the_input_channels():
    configuration = _configuration(2)
    stock = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                   configuration.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    ours = _network().unet
    stock_shapes = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert stock_shapes.keys() == our_shapes.keys()
    differing = {k for k in stock_shapes if stock_shapes[k] != our_shapes[k]}
    # the decoder keeps a reference to the encoder, so the first convolution appears under both prefixes
    first_conv = {"stages.0.0.convs.0.conv.weight", "stages.0.0.convs.0.all_modules.0.weight"}
    assert differing == {prefix + key for prefix in ("encoder.", "decoder.encoder.") for key in first_conv}
    assert our_shapes["encoder.stages.0.0.convs.0.conv.weight"][1] == 1 + 3  # image + C mask channels


def test_output_depends_on_the_timestep_and_on_the_noisy_mask():
    net = _network(deep_supervision=False).eval()
    image, x_t = torch.randn(1, 1, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        early, late = net(image, x_t, torch.tensor([0.2])), net(image, x_t, torch.tensor([1.0]))
        other_mask = net(image, -x_t, torch.tensor([0.2]))
    assert (early - late).abs().max() > 1e-3
    assert (early - other_mask).abs().max() > 1e-3


def test_gradients_reach_the_timestep_embedding_and_every_film_layer():
    net = _network(deep_supervision=False)
    out = net(torch.randn(2, 1, 32, 32), torch.randn(2, 3, 32, 32), torch.tensor([0.4, 0.8]))
    out.square().mean().backward()
    conditioning = {name: p for name, p in net.named_parameters() if name.startswith(("time_embedding", "film"))}
    assert len(conditioning) == len(list(net.time_embedding.parameters())) + 2 * len(net.film)  # weight, bias each
    for name, parameter in conditioning.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_every_encoder_and_decoder_stage_is_conditioned():
    net = _network()
    n_encoder, n_decoder = len(net.unet.encoder.stages), len(net.unet.decoder.stages)
    assert len(net.film) == n_encoder + n_decoder
    # a FiLM layer that does nothing must change nothing: zero one stage's layer and the output changes
    image, x_t, tau = torch.randn(1, 1, 32, 32), torch.randn(1, 3, 32, 32), torch.tensor([0.6])
    with torch.no_grad():
        reference = net(image, x_t, tau)[0]
        for layer in net.film:
            saved = layer.weight.clone(), layer.bias.clone()
            layer.weight.zero_(), layer.bias.zero_()
            assert (net(image, x_t, tau)[0] - reference).abs().max() > 1e-4
            layer.weight.copy_(saved[0]), layer.bias.copy_(saved[1])


def test_diffusion_settings_travel_in_the_state_dict():
    trained = _network(config=DiffusionConfig(num_timesteps=10, schedule="cosine", sampler="ddim", sampling_steps=4))
    fresh = _network()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.config == trained.config
    assert fresh.make_sampler().timesteps.tolist() == trained.make_sampler().timesteps.tolist()
    assert len(fresh.make_sampler().timesteps) == 4


def test_image_only_call_is_the_tile_seeded_reverse_process_in_log_space():
    net = _network(deep_supervision=False).eval()
    image = torch.randn(2, 1, 32, 32)
    log_p = net(image)
    assert log_p.shape == (2, 3, 32, 32)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(2, 32, 32), atol=1e-4)
    expected = net.sample(image, generator=torch.Generator().manual_seed(content_seed(image, TILE_SEED)))
    torch.testing.assert_close(log_p.exp(), expected, rtol=0, atol=1e-5)
    other_noise = net.sample(image, generator=torch.Generator().manual_seed(TILE_SEED + 1))
    assert (other_noise - expected).abs().max() > 1e-4  # sampled from noise, not one deterministic pass


def test_self_conditioning_adds_c_input_channels():
    net = _network(deep_supervision=False, config=DiffusionConfig(self_conditioning=True))
    assert net.unet.encoder.stages[0][0].convs[0].conv.weight.shape[1] == 1 + 3 + 3
    image, x_t, tau = torch.randn(1, 1, 32, 32), torch.randn(1, 3, 32, 32), torch.tensor([0.6])
    with torch.no_grad():
        assert (net(image, x_t, tau) - net(image, x_t, tau, torch.ones_like(x_t))).abs().max() > 1e-4


@pytest.mark.parametrize("conditioning", ["stage", "block"])
def test_the_unet_sees_the_image_and_m_of_the_noisy_mask(conditioning):
    """m(x) = (clip(x, -1, 1) + 1) / 2: values below -1 give 0, -1 gives 0, 0 gives 0.5, above 1 give 1."""
    net = _network(deep_supervision=False, config=DiffusionConfig(conditioning=conditioning))
    seen = []
    net.unet.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    image = torch.randn(1, 1, 32, 32)
    x_t = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 7.0]).repeat(3 * 32 * 4).view(1, 3, 32, 32)
    with torch.no_grad():
        net(image, x_t, torch.tensor([0.4]))
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]).repeat(3 * 32 * 4).view(1, 3, 32, 32)
    torch.testing.assert_close(seen[0][:, :1], image, rtol=0, atol=0)
    torch.testing.assert_close(seen[0][:, 1:], expected, rtol=0, atol=0)
