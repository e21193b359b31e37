"""Region models predict in region space and export through nnU-Net's own region handling."""

import numpy as np
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunet_fixtures import region_dataset_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_diffusion.diffusion.mask_encoding import entropy, export_logits
from nnunetv2_diffusion.diffusion.seeding import content_seed
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.inference.uncertainty import case_scores
from nnunetv2_diffusion.networks.diffusion_unet import TILE_SEED
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters

CPU = torch.device("cpu")
MANAGER = LabelManager(region_dataset_json()["labels"], regions_class_order=[1, 2])


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_export_logits_give_back_the_probabilities_through_nnunets_nonlinearity():
    p = torch.rand((2, 6, 7), generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    assert torch.allclose(MANAGER.apply_inference_nonlin(export_logits(p, regions=True)), p, atol=1e-5)
    exclusive = LabelManager({"background": 0, "a": 1, "b": 2}, None)
    q = torch.softmax(torch.randn((3, 6, 7)), 0)
    assert torch.allclose(exclusive.apply_inference_nonlin(export_logits(q)), q, atol=1e-5)
    segmentation = MANAGER.convert_logits_to_segmentation(export_logits(p, regions=True))
    assert torch.equal(torch.as_tensor(segmentation), torch.as_tensor(MANAGER.convert_probabilities_to_segmentation(p)))


def test_region_entropy_is_the_sum_of_binary_entropies():
    p = torch.tensor([[0.5, 1.0], [0.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(entropy(p, regions=True), torch.tensor([2 * np.log(2), 0.0], dtype=torch.float64))
    assert torch.allclose(entropy(p), torch.tensor([np.log(2), 0.0], dtype=torch.float64))


def test_region_case_scores_use_each_regions_channel():
    probabilities = np.array([[0.9, 0.9, 0.2], [0.1, 0.8, 0.0]])
    row = case_scores(np.array([1, 2, 0]), probabilities, region_dataset_json()["labels"], 2.0, regions=True)
    assert row["whole_volume"] == 4.0 and row["core_volume"] == 2.0
    assert np.isclose(row["core_uncertainty"], 1 - 2 * 0.8 / (1 + 0.9))


def test_a_region_model_predicts_regions_and_exports_them_as_nnunet_does(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters,
                                labels_json=region_dataset_json())
    write_raw_case(tmp_path / "in", "case", (40, 44))
    predictor = nnUNetDiffusionPredictor(device=CPU, allow_tqdm=False, use_mirroring=False, num_samples=2)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    assert predictor.regions
    out = tmp_path / "out"
    predictor.predict_from_files_sequential(str(tmp_path / "in"), str(out), save_probabilities=True)
    probabilities = np.load(out / "case.npz")["probabilities"]
    assert probabilities.shape[0] == 2
    # region probabilities do not sum to one: they are two sigmoids
    assert not np.allclose(probabilities.sum(0), 1.0, atol=1e-2)
    expected = MANAGER.convert_probabilities_to_segmentation(probabilities)
    assert np.array_equal(_read(out / "case.nii.gz")[0], np.asarray(expected)[0])
    entropy_map = _read(out / "uncertainty" / "case_entropy.nii.gz")
    assert entropy_map.max() > np.log(2) * 1.01  # above one binary entropy's maximum: two regions summed


def test_stock_nnunetv2_predict_on_a_region_diffusion_model_matches_the_sampled_regions(nnunet_env, tmp_path):
    # nnU-Net's predictor applies a sigmoid to what the network returns: the network must return logit(p)
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters,
                                labels_json=region_dataset_json())
    stock = nnUNetPredictor(device=CPU, allow_tqdm=False, use_mirroring=False)
    stock.initialize_from_trained_model_folder(folder, (0,))
    network = stock.network
    image = torch.randn((1, 1, 32, 32))
    logits = network(image)
    p = network.sample(image, generator=torch.Generator().manual_seed(content_seed(image, TILE_SEED)))
    assert network.config.regions
    assert logits.shape == p.shape == (1, 2, 32, 32)
    assert torch.allclose(stock.label_manager.apply_inference_nonlin(logits[0]), p[0], atol=1e-5)


def test_a_region_diffusion_model_ensembles_with_a_stock_region_model(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters,
                                labels_json=region_dataset_json())
    stock_folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainer, labels_json=region_dataset_json())
    write_raw_case(tmp_path / "in", "case", (40, 44))
    predictions = {}
    for weight in (0.0, 1.0):
        predictor = nnUNetDiffusionPredictor(device=CPU, allow_tqdm=False, use_mirroring=False,
                                             ensemble_weight=weight)
        predictor.initialize_from_trained_model_folder(folder, (0,))
        predictor.initialize_ensemble_model(stock_folder, (0,))
        out = tmp_path / f"w{weight}"
        predictor.predict_from_files_sequential(str(tmp_path / "in"), str(out), save_probabilities=True)
        predictions[weight] = np.load(out / "case.npz")["probabilities"]
    stock = nnUNetPredictor(device=CPU, allow_tqdm=False, use_mirroring=False)
    stock.initialize_from_trained_model_folder(stock_folder, (0,))
    (tmp_path / "stock").mkdir()
    stock.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "stock"), save_probabilities=True)
    stock_probabilities = np.load(tmp_path / "stock" / "case.npz")["probabilities"]
    assert np.allclose(predictions[1.0], stock_probabilities, atol=2e-3)
    assert not np.allclose(predictions[0.0], stock_probabilities, atol=2e-2)
