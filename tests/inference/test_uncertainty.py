"""K samples: the mutual-information map measures how much the samples disagree; one CSV row of scores per case."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case

from nnunetv2_diffusion.diffusion.mask_encoding import entropy
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.inference.uncertainty import case_scores, entropy_of_probabilities, volume_per_voxel
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters, nnUNetTrainerDiffSelfCond_10iters


def _predictor(folder, **kwargs):
    predictor = nnUNetDiffusionPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False, **kwargs)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    return predictor


def test_mutual_information_is_the_entropy_of_the_mean_minus_the_mean_entropy(nnunet_env):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    predictor = _predictor(folder, num_samples=3, steps=2)
    data = torch.randn(1, 1, 36, 40, generator=torch.Generator().manual_seed(0))
    case = predictor.predict_case(data)
    with torch.inference_mode():
        samples = [predictor._sample(data, [predictor.case_seed(data, 0, k)], None)[0][0] for k in range(3)]
    mean = torch.stack(samples).mean(0)
    expected = entropy(mean) - torch.stack([entropy(p) for p in samples]).mean(0)
    torch.testing.assert_close(case.probabilities, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(case.mutual_information, expected.clamp_min(0), rtol=0, atol=1e-5)
    assert case.mutual_information.max() > 1e-3  # the samples do disagree somewhere
    assert _predictor(folder, steps=2).predict_case(data).mutual_information is None


def test_case_scores_are_volume_and_one_minus_soft_dice():
    probabilities = np.array([[[0.9, 0.2, 0.1]], [[0.1, 0.8, 0.9]]])  # (C, 1, 3)
    segmentation = probabilities.argmax(0)
    row = case_scores(segmentation, probabilities, {"background": 0, "head": 1}, voxel_volume=2.0)
    assert row["head_volume"] == 4.0
    assert row["head_uncertainty"] == pytest.approx(1 - 2 * 1.7 / (2 + 1.8))
    certain = case_scores(segmentation, np.stack([1 - segmentation, segmentation]).astype(float),
                          {"background": 0, "head": 1}, 1.0)
    assert certain["head_uncertainty"] == 0.0


def test_maps_and_table_are_written_in_the_input_geometry(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    for index in range(2):
        write_raw_case(tmp_path / "in", f"case{index}", (40, 44), spacing=(0.8, 1.25, 1.0), seed=index)
    out = tmp_path / "out"
    _predictor(folder, num_samples=2, steps=2, save_samples=True).predict_from_files_sequential(
        str(tmp_path / "in"), str(out), save_probabilities=True)
    reference = sitk.ReadImage(str(tmp_path / "in" / "case0_0000.nii.gz"))
    maps = {kind: sitk.ReadImage(str(out / "uncertainty" / f"case0_{kind}.nii.gz"))
            for kind in ("entropy", "mutual_information")}
    for image in maps.values():
        assert image.GetSize() == reference.GetSize() and np.allclose(image.GetSpacing(), reference.GetSpacing())
    entropy_map, information = (sitk.GetArrayFromImage(maps[k]) for k in ("entropy", "mutual_information"))
    probabilities = np.load(out / "case0.npz")["probabilities"]
    np.testing.assert_allclose(entropy_map, entropy_of_probabilities(probabilities), atol=1e-5)
    assert information.min() >= 0 and information.max() > 0
    assert np.all(information <= entropy_map + 1e-3)  # the samples' disagreement is part of the total
    # each sample's own export, in the same geometry; their mean is the exported mean up to the resampling to this
    # case's spacing, which nnU-Net applies to logits before the softmax (exact where the export does not resample)
    samples = [np.load(out / "samples" / f"case0_sample{k}.npz")["probabilities"] for k in (1, 2)]
    assert samples[0].shape == probabilities.shape
    assert np.abs(np.mean(samples, 0) - probabilities).mean() < 0.01
    assert not np.allclose(samples[0], samples[1], atol=1e-3)
    assert sorted(p.name for p in (out / "samples").iterdir() if p.name.startswith("case1")) == [
        "case1_sample1.nii.gz", "case1_sample1.npz", "case1_sample1.pkl", "case1_sample2.nii.gz", "case1_sample2.npz",
        "case1_sample2.pkl"]
    with open(out / "uncertainty" / "uncertainty_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case0", "case1"]
    # columns in the order of the labels, each label's volume beside its score
    assert list(rows[0]) == ["case", "c1_volume", "c1_uncertainty", "c2_volume", "c2_uncertainty"]
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case0.nii.gz")))
    assert float(rows[0]["c1_volume"]) == pytest.approx((segmentation == 1).sum() * 0.8 * 1.25 * 1.0)
    assert 0 <= float(rows[0]["c2_uncertainty"]) <= 1


def test_the_mutual_information_map_is_the_entropy_of_the_mean_minus_the_mean_entropy(nnunet_env, tmp_path):
    """On the plans' grid (no resampling on export) the written map is H(mean p) - mean_k H(p_k) of the samples."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    write_raw_case(tmp_path / "in", "case", (36, 40))
    out = tmp_path / "out"
    _predictor(folder, num_samples=3, steps=2, save_samples=True).predict_from_files_sequential(
        str(tmp_path / "in"), str(out), save_probabilities=True)
    samples = [np.load(out / "samples" / f"case_sample{k}.npz")["probabilities"] for k in (1, 2, 3)]
    expected = entropy_of_probabilities(np.mean(samples, 0)) - np.mean([entropy_of_probabilities(p) for p in samples],
                                                                       0)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / "case_mutual_information.nii.gz")))
    np.testing.assert_allclose(written, expected, atol=1e-4)
    total = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / "case_entropy.nii.gz")))
    assert expected.max() > 1e-3 and (total - written).max() > 1e-3  # neither map is the other


def test_volume_per_voxel_leaves_out_the_nominal_axis_of_2d_images():
    assert volume_per_voxel((0.8, 1.25, 2.0), (30, 40, 50)) == pytest.approx(2.0)
    assert volume_per_voxel((999, 1, 1), (1, 135, 200)) == 1.0  # PNG: the volume is the pixel area
    assert volume_per_voxel((999 * 0.5, 0.5, 0.25), (1, 64, 64)) == pytest.approx(0.125)  # 2D NIfTI via SimpleITK
    assert volume_per_voxel((3.0, 0.5, 0.5), (1, 64, 64)) == pytest.approx(0.75)  # one real slice keeps its thickness


def test_entropy_is_log_c_for_uniform_and_zero_for_certain_voxels():
    probabilities = torch.tensor([[1 / 3, 1.0, 0.5], [1 / 3, 0.0, 0.5], [1 / 3, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(entropy(probabilities), torch.tensor([np.log(3), 0.0, np.log(2)], dtype=torch.float64))
    np.testing.assert_allclose(entropy_of_probabilities(probabilities.numpy()), [np.log(3), 0.0, np.log(2)],
                               rtol=1e-6)


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerDiffRecycle_10iters, nnUNetTrainerDiffSelfCond_10iters],
                         ids=lambda c: c.__name__)
def test_batched_samples_are_the_sequential_samples(nnunet_env, trainer_class):
    # each sample keeps its own seeded generator, so running them together changes nothing but rounding
    folder = write_model_folder(nnunet_env["nnUNet_results"], trainer_class)
    data = torch.randn(1, 1, 44, 50, generator=torch.Generator().manual_seed(1))  # several tiles of 32 x 32
    assert _predictor(folder, num_samples=4).sample_batch == 4  # the default runs all samples together
    sequential = _predictor(folder, num_samples=4, steps=3, save_steps=True, sample_batch=1).predict_case(data)
    for batch in (2, 4):
        batched = _predictor(folder, num_samples=4, steps=3, save_steps=True, sample_batch=batch).predict_case(data)
        torch.testing.assert_close(batched.probabilities, sequential.probabilities, rtol=0, atol=1e-5)
        torch.testing.assert_close(batched.mutual_information, sequential.mutual_information, rtol=0, atol=1e-5)
        for a, b in zip(batched.step_probabilities, sequential.step_probabilities, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_saved_samples_are_the_samples_of_smaller_k(nnunet_env):
    # sample k's noise depends on k, not on K: the first samples of a K = 4 run average to a K = 1 or K = 2 run
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    data = torch.randn(1, 1, 36, 40, generator=torch.Generator().manual_seed(2))
    case = _predictor(folder, num_samples=4, steps=2, save_samples=True, sample_batch=2).predict_case(data)
    assert len(case.sample_probabilities) == 4
    torch.testing.assert_close(torch.stack(case.sample_probabilities).mean(0), case.probabilities, rtol=0, atol=1e-6)
    for k in (1, 2):
        smaller = _predictor(folder, num_samples=k, steps=2).predict_case(data)
        assert smaller.sample_probabilities is None
        torch.testing.assert_close(torch.stack(case.sample_probabilities[:k]).mean(0), smaller.probabilities, rtol=0,
                                   atol=1e-5)
