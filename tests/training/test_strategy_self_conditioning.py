"""Self-conditioning (Chen et al. 2022) and its Watson et al. 2023 form: training and inference feed the estimate
channels the same way (zeros = no estimate, else m(x0_hat) of the earlier pass)."""

import torch
from nnunet_fixtures import make_trainer, random_batch
from spies import SpyNetwork
from strategy_checks import check_self_conditioning, check_self_conditioning_next

from nnunetv2_diffusion.diffusion.mask_encoding import network_mask_input, x0_from_logits
from nnunetv2_diffusion.training import nnUNetTrainerDiffSelfCond, nnUNetTrainerDiffSelfCondNext


def test_network_has_c_extra_input_channels_and_the_checkpoint_says_how_it_was_trained():
    trainer = make_trainer(nnUNetTrainerDiffSelfCond)
    assert trainer.network.unet.encoder.stages[0][0].convs[0].conv.weight.shape[1] == 1 + 3 + 3
    stored = trainer.network.state_dict()["_extra_state"]
    assert stored["self_conditioning"] and stored["strategy"] == "self_conditioning"


def test_chen_step_matches_its_definition():
    check_self_conditioning(make_trainer(nnUNetTrainerDiffSelfCond), seed=3)


def test_watson_step_takes_the_estimate_from_the_ground_truth_noised_to_t_plus_one():
    check_self_conditioning_next(make_trainer(nnUNetTrainerDiffSelfCondNext), seed=3)


def test_about_half_of_the_samples_get_an_estimate():
    trainer = make_trainer(nnUNetTrainerDiffSelfCond)
    trainer.network = SpyNetwork(trainer.network)
    torch.manual_seed(0)
    conditioned = []
    for seed in range(12):
        batch = random_batch(trainer, batch_size=8, seed=seed)
        with torch.no_grad():
            trainer.diffusion_forward(batch["data"], batch["target"])
        estimate = trainer.network.calls[-1]["x0_previous"]
        conditioned.append(network_mask_input(estimate).flatten(1).amax(1) > 0)
    assert 0.35 < torch.cat(conditioned).float().mean().item() < 0.65


def test_no_first_pass_when_every_sample_is_dropped_and_full_estimates_when_none_is():
    trainer = make_trainer(nnUNetTrainerDiffSelfCond)
    trainer.network = SpyNetwork(trainer.network)
    batch = random_batch(trainer, batch_size=4)
    trainer.self_conditioning_probability = 0.0
    trainer.train_step(batch)
    (only,) = trainer.network.calls
    assert torch.all(network_mask_input(only["x0_previous"]) == 0)
    trainer.network.calls.clear()
    trainer.self_conditioning_probability = 1.0
    trainer.train_step(batch)
    first, second = trainer.network.calls
    assert first["image"].shape[0] == 4
    assert torch.allclose(second["x0_previous"], x0_from_logits(first["output"]), atol=1e-6)


def test_inference_feeds_zero_channels_first_then_the_previous_steps_estimate():
    network = make_trainer(nnUNetTrainerDiffSelfCond, deep_supervision=False).network.eval()
    calls = []
    # what the U-Net receives: image, m(x_t), then the estimate channels
    network.unet.register_forward_pre_hook(lambda _, inputs: calls.append({"estimate_channels": inputs[0][:, 4:]}))
    network.unet.register_forward_hook(lambda module, inputs, output: calls[-1].update(logits=output))
    network.sample(torch.randn(2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    assert len(calls) == network.config.sampling_steps
    assert torch.all(calls[0]["estimate_channels"] == 0)  # what training's dropped samples and first passes see
    for previous, current in zip(calls, calls[1:], strict=False):
        assert torch.allclose(current["estimate_channels"], network_mask_input(x0_from_logits(previous["logits"])))
