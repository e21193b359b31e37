"""Files: atomic exports, per-step segmentations, uncertainty maps, and offline ensembling with stock nnU-Net."""

import os
import subprocess
import sys

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_fixtures import write_model_folder, write_raw_case
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

import nnunetv2_diffusion.inference.export as export_module
import nnunetv2_diffusion.inference.predictor as predictor_module
from nnunetv2_diffusion.inference.export import PARTIAL_FOLDER, write_float_image
from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
from nnunetv2_diffusion.inference.uncertainty import entropy_of_probabilities
from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters

CPU = torch.device("cpu")


def _predictor(folder, **kwargs) -> nnUNetDiffusionPredictor:
    predictor = nnUNetDiffusionPredictor(device=CPU, allow_tqdm=False, use_mirroring=False, **kwargs)
    predictor.initialize_from_trained_model_folder(folder, (0,))
    return predictor


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_steps_uncertainty_and_probabilities_are_written_in_the_input_geometry(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    write_raw_case(tmp_path / "in", "case", (40, 44), spacing=(0.8, 1.25, 1.0), origin=(3.0, -2.0, 5.0))
    out = tmp_path / "out"
    _predictor(folder, num_samples=2, save_steps=True, steps=3).predict_from_files_sequential(
        str(tmp_path / "in"), str(out), save_probabilities=True)

    reference = sitk.ReadImage(str(tmp_path / "in" / "case_0000.nii.gz"))
    segmentation = _read(out / "case.nii.gz")
    probabilities = np.load(out / "case.npz")["probabilities"]
    entropy_image = sitk.ReadImage(str(out / "uncertainty" / "case_entropy.nii.gz"))
    for written in (sitk.ReadImage(str(out / "case.nii.gz")), entropy_image):
        assert written.GetSize() == reference.GetSize()
        assert np.allclose(written.GetSpacing(), reference.GetSpacing())
        assert np.allclose(written.GetOrigin(), reference.GetOrigin())
    assert entropy_image.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(sitk.GetArrayFromImage(entropy_image), entropy_of_probabilities(probabilities), atol=1e-5)
    assert np.array_equal(segmentation, probabilities.argmax(0))
    steps = sorted(os.listdir(out / "steps"))
    assert steps == [f"case_step{k}.nii.gz" for k in (1, 2, 3)]
    assert not (out / PARTIAL_FOLDER).exists() and not (out / "steps" / PARTIAL_FOLDER).exists()


def test_last_step_segmentation_is_the_result_with_one_sample(nnunet_env, tmp_path):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    write_raw_case(tmp_path / "in", "case", (40, 44))
    _predictor(folder, save_steps=True, steps=2).predict_from_files_sequential(str(tmp_path / "in"),
                                                                              str(tmp_path / "out"))
    out = tmp_path / "out"
    assert np.array_equal(_read(out / "steps" / "case_step2.nii.gz"), _read(out / "case.nii.gz"))
    assert not (out / "uncertainty").exists()


def test_an_export_that_fails_midway_leaves_no_output_file(nnunet_env, tmp_path, monkeypatch):
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    write_raw_case(tmp_path / "in", "case", (36, 36))

    def killed_while_writing(logits, properties, cm, pm, dataset_json, output_file_truncated, save_probabilities):
        with open(output_file_truncated + ".npz", "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export_prediction_from_logits", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        _predictor(folder).predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"),
                                                         save_probabilities=True)
    assert not any(name.startswith("case") for name in os.listdir(tmp_path / "out"))


def test_a_case_killed_before_its_uncertainty_maps_has_no_segmentation(nnunet_env, tmp_path, monkeypatch):
    """--continue_prediction skips every case whose segmentation exists, so it must be the case's last file."""
    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    write_raw_case(tmp_path / "in", "case", (36, 36))

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(predictor_module, "export_uncertainty_maps", killed)
    with pytest.raises(KeyboardInterrupt):
        _predictor(folder, num_samples=2, steps=2).predict_from_files_sequential(str(tmp_path / "in"),
                                                                                 str(tmp_path / "out"))
    assert not any(name.startswith("case") for name in os.listdir(tmp_path / "out"))


def test_a_writer_keeps_its_partial_folder_while_another_process_tidies_up(tmp_path):
    """The parts of a -num_parts split share one output folder; each removes the empty .partial folder when it
    starts and ends, which must not pull the folder from under a case another part is exporting."""
    out = tmp_path / "out"
    out.mkdir()
    with export_module.temporary_name(str(out / "case_001")) as temporary:
        export_module.remove_partial_folder(str(out))  # the other part, starting or finishing
        np.save(temporary + ".npy", np.arange(3))
        os.replace(temporary + ".npy", out / "case_001.npy")
    export_module.remove_partial_folder(str(out))
    assert os.listdir(out) == ["case_001.npy"]
    with pytest.raises(KeyboardInterrupt), export_module.temporary_name(str(out / "case_002")) as temporary:
        np.save(temporary + ".npy", np.arange(3))
        raise KeyboardInterrupt  # killed before the rename: the half-done file goes, the finished one stays
    export_module.remove_partial_folder(str(out))
    assert os.listdir(out) == ["case_001.npy"]


def test_float_maps_keep_the_geometry_of_nibabel_inputs(tmp_path):
    affine = np.array([[0.0, 0.0, 1.5, 10.0], [0.0, -0.8, 0.0, 4.0], [1.2, 0.0, 0.0, -3.0], [0.0, 0.0, 0.0, 1.0]])
    nibabel.save(nibabel.Nifti1Image(np.zeros((5, 6, 7), dtype=np.float32), affine), tmp_path / "img.nii.gz")
    image, properties = NibabelIO().read_images([str(tmp_path / "img.nii.gz")])
    values = np.random.default_rng(0).random(image.shape[1:]).astype(np.float32)
    path = write_float_image(values, str(tmp_path / "map"), ".nii.gz", properties, NibabelIO())
    written = nibabel.load(path)
    assert np.allclose(written.affine, affine)
    assert np.allclose(written.get_fdata(), values.transpose(2, 1, 0), atol=1e-6)


def test_stock_nnunet_ensemble_accepts_our_probabilities(nnunet_env, tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    results = nnunet_env["nnUNet_results"]
    diffusion_folder = write_model_folder(results, nnUNetTrainerDiffRecycle_10iters)
    stock_folder = write_model_folder(results, nnUNetTrainer, seed=5)
    for i, shape in enumerate([(40, 44), (36, 50)]):
        write_raw_case(tmp_path / "in", f"case{i}", shape, seed=i)
    ours, stock_out = str(tmp_path / "diffusion"), str(tmp_path / "stock")
    _predictor(diffusion_folder).predict_from_files_sequential(str(tmp_path / "in"), ours, save_probabilities=True)
    stock = nnUNetPredictor(use_mirroring=False, device=CPU, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(stock_folder, (0,))
    os.makedirs(stock_out)  # the stock sequential prediction does not create it
    stock.predict_from_files_sequential(str(tmp_path / "in"), stock_out, save_probabilities=True)
    # weight 1 reproduces the stock model's exported probabilities
    weight_one = _predictor(diffusion_folder, ensemble_weight=1.0)
    weight_one.initialize_ensemble_model(stock_folder, (0,))
    weight_one.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "w1"), save_probabilities=True)

    command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_ensemble"), "-i", ours, stock_out,
               "-o", str(tmp_path / "ensembled"), "-np", "1", "--save_npz"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)

    for case in ("case0", "case1"):
        p_ours = np.load(f"{ours}/{case}.npz")["probabilities"]
        p_stock = np.load(f"{stock_out}/{case}.npz")["probabilities"]
        ensembled = np.load(tmp_path / "ensembled" / f"{case}.npz")["probabilities"]
        assert np.allclose(ensembled, (p_ours + p_stock) / 2, atol=1e-6)
        assert np.array_equal(_read(tmp_path / "ensembled" / f"{case}.nii.gz"), ensembled.argmax(0))
        assert np.allclose(np.load(tmp_path / "w1" / f"{case}.npz")["probabilities"], p_stock, atol=1e-5)
        assert np.array_equal(_read(tmp_path / "w1" / f"{case}.nii.gz"), _read(f"{stock_out}/{case}.nii.gz"))


def test_array_api_returns_what_the_file_path_writes(nnunet_env, tmp_path):
    """nnU-Net's ``predict_from_list_of_npy_arrays`` with no output name: items with ``ofile`` None come back as
    (segmentation, probabilities) in the input geometry instead of being written, with the same noise as from files."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    path = write_raw_case(tmp_path / "in", "case", (40, 44))
    _predictor(folder, num_samples=2, steps=2).predict_from_files_sequential(
        str(tmp_path / "in"), str(tmp_path / "out"), save_probabilities=True)

    image, properties = SimpleITKIO().read_images([path])
    written_before = _files_under(tmp_path)
    returned = _predictor(folder, num_samples=2, steps=2).predict_from_list_of_npy_arrays(
        image, None, properties, None, num_processes=1, save_probabilities=True,
        num_processes_segmentation_export=0)
    assert len(returned) == 1
    segmentation, probabilities = returned[0]
    assert segmentation.shape == image.shape[1:]
    assert np.array_equal(segmentation, _read(tmp_path / "out" / "case.nii.gz"))
    assert np.allclose(probabilities, np.load(tmp_path / "out" / "case.npz")["probabilities"], atol=1e-6)
    assert _files_under(tmp_path) == written_before


def _files_under(folder) -> set:
    return {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}
