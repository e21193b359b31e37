"""Global-step sampling: agreement with the network's own sampler, call structure, seeds, folds, samples, ensemble."""

import json
import os

import numpy as np
import pytest
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunetv2_diffusion.diffusion.seeding import content_seed
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters, nnUNetTrainerDiffSelfCond_10iters

CPU = torch.device("cpu")


def _predictor(folder, folds=(0,), **kwargs) -> nnUNetDiffusionPredictor:
    kwargs.setdefault("use_mirroring", False)
    predictor = nnUNetDiffusionPredictor(device=CPU, allow_tqdm=False, **kwargs)
    predictor.initialize_from_trained_model_folder(folder, folds)
    return predictor


def _image_for_network(data: torch.Tensor, dim: int) -> torch.Tensor:
    """Preprocessed case (c, *spatial), 2D as (c, 1, x, y) -> network batch (1, c, *spatial)."""
    return data[:, 0][None] if dim == 2 else data[None]


@pytest.mark.parametrize("dim,sampler,eta,trainer", [
    (2, "ddpm", None, nnUNetTrainerDiffRecycle_10iters),
    (2, "ddim", 0.5, nnUNetTrainerDiffRecycle_10iters),
    (3, "ddpm", None, nnUNetTrainerDiffRecycle_10iters),
    (2, "ddpm", None, nnUNetTrainerDiffSelfCond_10iters),  # previous estimate in extra channels
])
def test_case_of_one_tile_gives_what_sampling_the_network_directly_gives(nnunet_env, dim, sampler, eta, trainer):
    folder = write_model_folder(nnunet_env["nnUNet_results"], trainer, dim=dim)
    predictor = _predictor(folder, sampler=sampler, eta=eta, steps=4)
    data = torch.randn(1, 1, 32, 32) if dim == 2 else torch.randn(1, 16, 16, 16)  # exactly the patch size
    assert len(predictor._internal_get_sliding_window_slicers(data.shape[1:])) == 1

    probabilities = predictor.predict_case(data).probabilities

    net = predictor.diffusion_network
    generator = torch.Generator().manual_seed(predictor.case_seed(data))
    expected = net.sample(_image_for_network(data, dim), sampler=net.make_sampler(sampler, 4, eta),
                          generator=generator)[0]
    assert torch.allclose(probabilities[:, 0] if dim == 2 else probabilities, expected, atol=1e-5)


@pytest.mark.parametrize("trainer", [nnUNetTrainerDiffRecycle_10iters, nnUNetTrainerDiffSelfCond_10iters])
def test_network_is_called_steps_x_tiles_x_mirrors_times_with_all_tiles_at_one_step_before_the_next(nnunet_env,
                                                                                                     trainer):
    folder = write_model_folder(nnunet_env["nnUNet_results"], trainer, dim=2)
    predictor = _predictor(folder, use_mirroring=True, steps=3)
    data = torch.randn(1, 1, 48, 48)  # patch 32, step 0.5: 2 x 2 tiles
    tiles = len(predictor._internal_get_sliding_window_slicers(data.shape[1:]))
    mirrors = 4  # 2D: none, x, y, xy
    net = predictor.diffusion_network
    batch_sizes, taus = [], []
    net.unet.register_forward_hook(lambda module, inputs, output: batch_sizes.append(inputs[0].shape[0]))
    net.time_embedding.register_forward_pre_hook(lambda module, inputs: taus.append(inputs[0].item()))

    predictor.predict_case(data)

    assert tiles == 4
    assert len(batch_sizes) == 3 * tiles * mirrors and set(batch_sizes) == {1}
    expected_taus = [(t + 1) / 5 for t in predictor.sampler.timesteps.tolist() for _ in range(tiles * mirrors)]
    assert taus == pytest.approx(expected_taus)


def test_calls_scale_with_folds_and_samples(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, folds=(0, 1))
    data = torch.randn(1, 1, 40, 40)  # 2 x 2 tiles
    for sample_batch, expected in ((1, 2 * 3 * 2 * 4), (None, 2 * 2 * 4)):  # default: the 3 samples share each call
        predictor = _predictor(folder, folds=(0, 1), steps=2, num_samples=3, sample_batch=sample_batch)
        calls = []
        predictor.diffusion_network.unet.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        predictor.predict_case(data)
        assert len(calls) == expected, sample_batch


def test_same_seed_same_output_other_seed_other_output_whatever_the_case_order(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    case_a, case_b = torch.randn(1, 1, 40, 36), torch.randn(1, 1, 40, 36)
    first = _predictor(folder, seed=7, sampler="ddpm")
    a_then_b = [first.predict_case(case).probabilities for case in (case_a, case_b)]
    second = _predictor(folder, seed=7, sampler="ddpm")
    b_then_a = [second.predict_case(case).probabilities for case in (case_b, case_a)]
    other_seed = _predictor(folder, seed=8, sampler="ddpm").predict_case(case_a).probabilities

    assert torch.equal(a_then_b[0], b_then_a[1]) and torch.equal(a_then_b[1], b_then_a[0])
    assert (a_then_b[0] - other_seed).abs().max() > 1e-3
    assert (a_then_b[0] - a_then_b[1]).abs().max() > 1e-3


def test_the_settings_recorded_in_the_output_folder_reproduce_the_prediction(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, folds=(0, 1))
    write_raw_case(tmp_path / "in", "case", (40, 36))
    first = _predictor(folder, folds=(0, 1), seed=11, sampler="ddim", eta=0.5, steps=3, num_samples=2)
    first.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "first"), save_probabilities=True)

    recorded = json.loads((tmp_path / "first" / "diffusion_settings.json").read_text())
    assert {k: recorded[k] for k in ("model", "folds", "checkpoint", "sampler", "steps", "eta", "seed", "num_samples",
                                     "training_timesteps", "schedule", "use_mirroring", "device")} == {
        "model": folder, "folds": [0, 1], "checkpoint": "checkpoint_final.pth", "sampler": "ddim", "steps": 3,
        "eta": 0.5, "seed": 11, "num_samples": 2, "training_timesteps": 5, "schedule": "linear",
        "use_mirroring": False, "device": "cpu"}
    assert recorded["timesteps"] == first.sampler.timesteps.tolist() and len(recorded["timesteps"]) == 3
    assert set(recorded["versions"]) == {"nnunetv2_diffusion", "nnunetv2", "torch"}
    assert not os.path.exists(tmp_path / "first" / ".partial")  # written under a temporary name, then renamed

    def rerun(seed, output):
        predictor = nnUNetDiffusionPredictor(
            tile_step_size=recorded["tile_step_size"], use_gaussian=recorded["use_gaussian"],
            use_mirroring=recorded["use_mirroring"], device=torch.device(recorded["device"]), allow_tqdm=False,
            sampler=recorded["sampler"], steps=recorded["steps"], eta=recorded["eta"], seed=seed,
            num_samples=recorded["num_samples"])
        predictor.initialize_from_trained_model_folder(recorded["model"], recorded["folds"], recorded["checkpoint"])
        predictor.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / output), save_probabilities=True)
        return np.load(tmp_path / output / "case.npz")["probabilities"]

    expected = np.load(tmp_path / "first" / "case.npz")["probabilities"]
    assert np.array_equal(rerun(recorded["seed"], "again"), expected)
    assert json.loads((tmp_path / "again" / "diffusion_settings.json").read_text()) == recorded
    assert np.abs(rerun(recorded["seed"] + 1, "other_seed") - expected).max() > 1e-3


def test_folds_and_samples_average_probabilities(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, folds=(0, 1))
    predictor = _predictor(folder, folds=(0, 1), num_samples=2, steps=3)
    data = torch.randn(1, 1, 32, 32)
    probabilities = predictor.predict_case(data).probabilities

    net = predictor.diffusion_network
    expected, seeds = [], set()
    for fold, parameters in enumerate(predictor.list_of_parameters):
        net.load_state_dict(parameters)
        for sample in range(2):
            # every (fold, sample) its own noise: the seed is derived here, not read back from the predictor
            seeds.add(content_seed(data, predictor.seed, fold, sample))
            generator = torch.Generator().manual_seed(content_seed(data, predictor.seed, fold, sample))
            expected.append(net.sample(data[:, 0][None], sampler=net.make_sampler(None, 3), generator=generator)[0])
    assert torch.allclose(probabilities[:, 0], torch.stack(expected).mean(0), atol=1e-5)
    assert len(seeds) == 4


def test_every_step_is_kept_only_on_request_and_the_last_step_is_the_result(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    data = torch.randn(1, 1, 30, 44)  # smaller than a tile along x: padded, then cropped back
    assert _predictor(folder).predict_case(data).step_probabilities is None
    case = _predictor(folder, save_steps=True, steps=4).predict_case(data)
    assert len(case.step_probabilities) == 4
    assert case.probabilities.shape == (3, 1, 30, 44)
    assert torch.allclose(case.step_probabilities[-1], case.probabilities)
    assert torch.allclose(case.probabilities.sum(0), torch.ones(1, 30, 44), atol=1e-5)
    # every run starts at t = T-1 from the same seeded x_T, so the first kept step is what a 1-step run returns
    first_step_only = _predictor(folder, steps=1).predict_case(data).probabilities
    assert torch.allclose(case.step_probabilities[0], first_step_only, atol=1e-6)
    assert (case.step_probabilities[0] - case.probabilities).abs().max() > 1e-3  # not one result kept N times


def test_ensemble_weight_1_is_the_stock_model_and_0_the_diffusion_model(nnunet_env):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    results = nnunet_env["nnUNet_results"]
    diffusion_folder = write_model_folder(results, nnUNetTrainerDiffRecycle_10iters)
    stock_folder = write_model_folder(results, nnUNetTrainer, seed=3)
    data = torch.randn(1, 1, 40, 50)
    stock = nnUNetPredictor(use_mirroring=False, device=CPU, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(stock_folder, (0,))
    stock_probabilities = torch.softmax(stock.predict_logits_from_preprocessed_data(data).float(), 0)
    diffusion_only = _predictor(diffusion_folder).predict_case(data).probabilities

    outputs = {}
    for weight in (0.0, 0.25, 1.0):
        predictor = _predictor(diffusion_folder, ensemble_weight=weight)
        predictor.initialize_ensemble_model(stock_folder, (0,))
        outputs[weight] = predictor.predict_case(data).probabilities

    assert torch.allclose(outputs[1.0], stock_probabilities, atol=1e-6)
    assert torch.equal(outputs[0.0], diffusion_only)
    assert torch.allclose(outputs[0.25], 0.75 * diffusion_only + 0.25 * stock_probabilities, atol=1e-6)
    assert (stock_probabilities - diffusion_only).abs().max() > 1e-2  # the two models do differ


def test_chunked_in_place_update_is_the_sampler_step():
    from nnunetv2_diffusion.diffusion.samplers import make_sampler
    from nnunetv2_diffusion.diffusion.schedules import make_alphas_cumprod
    from nnunetv2_diffusion.inference.global_step import ChunkedInPlaceUpdate as _ChunkedInPlaceUpdate

    abar = make_alphas_cumprod("linear", 5)
    x0, x_t = torch.rand(1, 3, 6, 7) * 2 - 1, torch.randn(1, 3, 6, 7)
    ddim = make_sampler("ddim", alphas_cumprod=abar, eta=0.0)  # no noise: any chunking gives the same update
    t = int(ddim.timesteps[1])
    chunked = _ChunkedInPlaceUpdate(ddim, max_elements=3 * 5).step(x0, t, x_t.clone())
    assert torch.allclose(chunked, ddim.step(x0, t, x_t), atol=1e-6)
    ddpm = make_sampler("ddpm", alphas_cumprod=abar)  # one chunk draws the noise sampler.step draws
    t = int(ddpm.timesteps[1])
    whole = ddpm.step(x0, t, x_t, generator=torch.Generator().manual_seed(3))
    one_chunk = _ChunkedInPlaceUpdate(ddpm).step(x0, t, x_t.clone(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(one_chunk, whole)
    in_place = x_t.clone()
    assert _ChunkedInPlaceUpdate(ddpm, max_elements=9).step(x0, t, in_place) is in_place


def test_mirroring_flips_the_noisy_mask_together_with_the_image(nnunet_env):
    """With a network that is a per-voxel function of (image, x_t), every mirror gives the same answer, so mirroring on
    and off agree exactly, unless a mirror flips the image but not x_t (or the reverse)."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, dim=2)
    data = torch.randn(1, 1, 40, 52, generator=torch.Generator().manual_seed(4))
    results = []
    for mirroring in (False, True):
        predictor = _predictor(folder, use_mirroring=mirroring, steps=3)
        network = predictor.diffusion_network

        def per_voxel(image, x_t, tau, x0_previous=None):
            return 3 * image * torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1) + 2 * x_t.clamp(-1, 1)

        network.forward = per_voxel
        results.append(predictor.predict_case(data).probabilities)
    assert (results[0] - 1 / 3).abs().max() > 0.1  # the function is far from uniform: the check has teeth
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-5)


def test_denoise_case_is_one_step_of_the_network_on_a_single_tile(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, dim=2)
    predictor = _predictor(folder)
    data, x_t = torch.randn(1, 1, 32, 32), torch.randn(3, 1, 32, 32)
    probabilities = predictor.denoise_case(data, x_t, 2)
    net = predictor.diffusion_network
    with torch.no_grad():
        logits = net(data[:, 0][None], x_t[:, 0][None], net.tau(2, 1, "cpu"))
    torch.testing.assert_close(probabilities[:, 0], torch.softmax(logits, 1)[0], rtol=0, atol=1e-5)


def test_stock_predictor_on_a_diffusion_model_repeats_exactly(nnunet_env):
    """Stock nnUNetv2_predict samples per tile through the network's image-only call: its noise comes from the
    tile's content, not from the global random generator."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, dim=2)
    predictor = nnUNetPredictor(use_mirroring=True, device=CPU, allow_tqdm=False, perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    data = torch.randn(1, 1, 40, 52, generator=torch.Generator().manual_seed(2))
    first = predictor.predict_logits_from_preprocessed_data(data)
    torch.manual_seed(123)  # the global generator no longer matters
    second = predictor.predict_logits_from_preprocessed_data(data)
    assert torch.equal(first, second)
    # that the seed is the tile's content hash is pinned by test_diffusion_unet.py::
    # test_image_only_call_is_the_tile_seeded_reverse_process_in_log_space (a flipped-image comparison here cannot
    # tell content-seeded noise from a fixed noise field: the network is not flip-equivariant either way)


def test_a_fold_samples_the_same_noise_alone_or_beside_other_folds(nnunet_env):
    """The noise is seeded with the fold's id, not its position in -f: -f 1 gives fold 1's sample of -f 0 1."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters, folds=(0, 1))
    data = torch.randn(1, 1, 36, 36, generator=torch.Generator().manual_seed(3))
    both = _predictor(folder, folds=(0, 1), save_samples=True, use_mirroring=False).predict_case(data)
    alone = _predictor(folder, folds=(1,), save_samples=True, use_mirroring=False).predict_case(data)
    assert torch.equal(alone.sample_probabilities[0], both.sample_probabilities[1])
    assert not torch.allclose(both.sample_probabilities[0], both.sample_probabilities[1])


def test_without_a_seed_every_run_draws_fresh_noise(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    data = torch.randn(1, 1, 36, 36, generator=torch.Generator().manual_seed(4))
    predictor = _predictor(folder, seed=None)
    first, second = (predictor.predict_case(data).probabilities for _ in range(2))
    assert (first - second).abs().max() > 1e-4
    seeded = _predictor(folder, seed=0)
    assert torch.equal(seeded.predict_case(data).probabilities, seeded.predict_case(data).probabilities)
