"""Diffusion segmentation inside nnU-Net's predictor: global-step sliding-window sampling (DESIGN §1, §2).

At every denoising step, nnU-Net's own sliding-window machinery (its tile positions, Gaussian tile weights and
mirroring) predicts x0 logits over the whole case from the image and the current whole-case noisy mask x_t; then one
DDPM/DDIM update moves the whole-case x_t to the next timestep. Tiles therefore share one noise field and agree at
every step, and one step costs about one stock nnU-Net prediction.

The result goes back to nnU-Net as log-probabilities in place of its logits: nnU-Net's export applies softmax, and
softmax(log p) = p, so resampling, export, ``--save_probabilities`` and ``nnUNetv2_ensemble`` work unchanged.

Compared with the stock predictor: folds are averaged as probabilities (not logits); accumulation is float32 (stock:
float16) and the whole-case state (x_t and one logits buffer) is updated in place; exports are written under
temporary names and renamed when complete; optional K samples per case with an entropy map, per-step segmentations
and a probability ensemble with a stock nnU-Net model.
"""

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
from dataclasses import dataclass
from importlib.metadata import version as package_version
from time import sleep

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.helpers import dummy_context, empty_cache
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nnunetv2_diffusion import __version__
from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.mask_encoding import no_estimate_like, probabilities_from_x0
from nnunetv2_diffusion.diffusion.samplers import SAMPLERS
from nnunetv2_diffusion.file_integrity import NIFTI_ENDINGS, nifti_file_problem
from nnunetv2_diffusion.inference.export import (
    export_prediction_atomically,
    export_uncertainty_map,
    partial_name,
    remove_partial_folder,
)
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet
from nnunetv2_diffusion.training.checkpointing import CheckpointError, load_checkpoint_file
from nnunetv2_diffusion.training.nnUNetTrainerDiff import nnUNetTrainerDiff

DEFAULT_SEED = 0
"""Inference is reproducible by default, like stock nnU-Net's; ``seed=None`` draws fresh noise every run."""

STEPS_FOLDER = "steps"
UNCERTAINTY_FOLDER = "uncertainty"
# Subfolders, not files next to the segmentations: nnU-Net's evaluation and ensembling read every file with the
# dataset's ending (or .npz) in the output folder and expect one per case.

_MIN_PROBABILITY = 1e-20  # log(1e-20) = -46: finite in float32 and far below any probability that matters
UPDATE_CHUNK_ELEMENTS = 2**24
"""The whole-case sampler update runs on chunks of at most this many values (64 MiB in float32), in place."""


class DiffusionPredictorError(ValueError):
    """Bad input found before any case is predicted. The message is one line naming the folder, file or option."""


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while isinstance(network, (DistributedDataParallel, OptimizedModule)):
        network = network.module if isinstance(network, DistributedDataParallel) else network._orig_mod
    return network


def log_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities (C, *spatial) -> float32 log-probabilities, nnU-Net's "logits" (softmax gives them back)."""
    return torch.log(probabilities.float().clamp_min(_MIN_PROBABILITY))


@dataclass
class CasePrediction:
    """What the predictor computes for one preprocessed case.

    probabilities: (C, *preprocessed spatial) float32 on the CPU: the mean over folds and samples, ensembled with
        the stock model if one is set.
    step_probabilities: with ``save_steps``, the diffusion model's mean probabilities after each denoising step
        (same shape; the last equals ``probabilities`` without an ensemble), else None.
    """

    probabilities: torch.Tensor
    step_probabilities: list[torch.Tensor] | None = None


class _StepDenoiser(nn.Module):
    """The denoiser at one timestep, presented as an image-only network so nnU-Net's mirroring can call it.

    A tile is concat(image, x_t[, x0_previous]) on the channel axis, so a flip moves all of them together; the
    output is float32 logits, so mirror averaging is float32 too.
    """

    def __init__(self, network: nn.Module, diffusion_network: DiffusionSegmentationUNet, autocast_device: str | None):
        super().__init__()
        self.network = network  # possibly compiled / DDP-wrapped: called, never looked into
        self.num_image_channels = diffusion_network.num_image_channels
        self.num_classes = diffusion_network.num_classes
        self.self_conditioning = diffusion_network.config.self_conditioning
        self.tau_value = diffusion_network.tau
        self.autocast_device = autocast_device
        self.timestep: int | None = None

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        c, k = self.num_image_channels, self.num_classes
        image, x_t = tiles[:, :c], tiles[:, c:c + k]
        x0_previous = tiles[:, c + k:] if self.self_conditioning else None
        tau = self.tau_value(self.timestep, tiles.shape[0], tiles.device)
        context = torch.autocast(self.autocast_device, enabled=True) if self.autocast_device else dummy_context()
        with context:
            logits = self.network(image, x_t, tau, x0_previous)
        return (logits[0] if isinstance(logits, (list, tuple)) else logits).float()


def _x0_from_logits_in_place(logits: torch.Tensor) -> torch.Tensor:
    """``mask_encoding.x0_from_logits`` for one case (C, *spatial) float32, overwriting the logits:
    2 softmax(logits) - 1 over the channel axis."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True)).mul_(2).sub_(1)


class _ChunkedInPlaceUpdate:
    """A sampler whose ``step`` updates the whole-case x_t in place, chunk by chunk.

    ``sampler.step`` is elementwise but allocates several temporaries the size of its input; on a large 3D case
    these would dominate the memory. Here it runs on chunks of at most ``max_elements`` values of the flattened
    (1, C, N) arrays and writes each result back into x_t. Each chunk draws its own noise from the generator, in
    order, so a case of at most ``max_elements`` values is one chunk and draws exactly what ``sampler.step`` on the
    whole case draws; larger cases get a different (equally valid) noise field for the same seed.
    """

    def __init__(self, sampler, max_elements: int = UPDATE_CHUNK_ELEMENTS):
        self.sampler = sampler
        self.timesteps = sampler.timesteps
        self.max_elements = max_elements

    def step(self, x0_pred: torch.Tensor, timestep, sample: torch.Tensor, *, generator=None) -> torch.Tensor:
        """x0_pred, sample: (1, C, *spatial); returns ``sample``, updated to the next timestep."""
        x0_flat = x0_pred.reshape(1, x0_pred.shape[1], -1)
        sample_flat = sample.view(1, sample.shape[1], -1)
        width = max(1, self.max_elements // sample.shape[1])
        for start in range(0, sample_flat.shape[2], width):
            chunk = (slice(None), slice(None), slice(start, start + width))
            sample_flat[chunk] = self.sampler.step(x0_flat[chunk], timestep, sample_flat[chunk], generator=generator)
        return sample


class nnUNetDiffusionPredictor(nnUNetPredictor):
    """nnU-Net's predictor with the global-step diffusion sampler.

    The first eight arguments are nnU-Net's (the trainer's final validation constructs the predictor with them).
    Diffusion options (keyword-only) default to the settings stored in the model's checkpoint:

    sampler: 'ddpm' or 'ddim'; steps: denoising steps in [1, T]; eta: DDIM noise in [0, 1] (DDIM only).
    seed: the noise of every case comes from a generator seeded with (seed, the case's content, fold, sample), so a
        case gets the same result whatever the order or company it is predicted in; None: fresh noise every run.
    num_samples: K independent samples per case (and fold), probabilities averaged; with K > 1 the export also
        writes the per-voxel entropy of the exported (mean, and ensembled if set) probabilities, in nats, to
        ``<output>/uncertainty/<case>_entropy<ending>`` in the input image's geometry.
    save_steps: also write the segmentation after every denoising step to ``<output>/steps/<case>_step<k><ending>``
        (k = 1..steps); per-step probabilities are kept in memory only then.
    ensemble_weight: w of ``(1 - w) p_diffusion + w p_stock`` once :meth:`initialize_ensemble_model` set a stock
        model; averaged in preprocessed space, before export.
    """

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 perform_everything_on_device: bool = True, device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
                 verbose: bool = False, verbose_preprocessing: bool = False, allow_tqdm: bool = True, *,
                 sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                 seed: int | None = DEFAULT_SEED, num_samples: int = 1, save_steps: bool = False,
                 ensemble_weight: float = 0.5):
        _check_options(sampler, steps, eta, num_samples, ensemble_weight)
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device, verbose,
                         verbose_preprocessing, allow_tqdm)
        self.sampler_name, self.num_steps, self.eta = sampler, steps, eta
        self.seed, self.num_samples, self.save_steps = seed, num_samples, save_steps
        self.ensemble_weight = ensemble_weight
        self.sampler = None  # built once a model is loaded (needs its schedule)
        self.model_source: str | None = None
        self.ensemble_predictor: nnUNetPredictor | None = None
        self.ensemble_source: str | None = None
        self.folds: list | None = None  # set by initialize_from_trained_model_folder
        self.checkpoint_name: str | None = None

    # ------------------------------------------------------------------ loading the models
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        """Loads a diffusion model folder; refuses a non-diffusion model or a checkpoint without diffusion settings
        (:class:`DiffusionPredictorError`) before anything is predicted."""
        folds = _check_model_folder(model_training_output_dir, use_folds, checkpoint_name, require_diffusion=True)
        super().initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        self.folds, self.checkpoint_name = folds, checkpoint_name
        self._finish_initialization(model_training_output_dir)

    def manual_initialization(self, network, plans_manager, configuration_manager, parameters, dataset_json,
                              trainer_name, inference_allowed_mirroring_axes):
        """What nnU-Net's final validation calls, with the trainer's network."""
        super().manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                      trainer_name, inference_allowed_mirroring_axes)
        self._finish_initialization(f"the network of trainer {trainer_name}")

    def _finish_initialization(self, source: str) -> None:
        self.model_source = source
        if not isinstance(unwrap_network(self.network), DiffusionSegmentationUNet):
            raise DiffusionPredictorError(f"{source}: the network is a {type(unwrap_network(self.network)).__name__}, "
                                          f"not a diffusion network (no diffusion settings)")
        self.sampler = self._make_sampler(source)

    @property
    def diffusion_network(self) -> DiffusionSegmentationUNet:
        return unwrap_network(self.network)

    def _make_sampler(self, source: str):
        config = self.diffusion_network.config
        name = self.sampler_name or config.sampler
        if name == "ddpm" and self.eta is not None:
            raise DiffusionPredictorError(f"eta applies to the ddim sampler only; {source} samples with ddpm "
                                          f"(choose --sampler ddim or drop --eta)")
        steps = self.num_steps or config.sampling_steps
        if steps > config.num_timesteps:
            raise DiffusionPredictorError(f"steps={steps} exceeds the {config.num_timesteps} timesteps {source} was "
                                          f"trained with; choose steps in [1, {config.num_timesteps}]")
        return self.diffusion_network.make_sampler(name, steps, self.eta)

    def initialize_ensemble_model(self, model_training_output_dir: str, use_folds=None,
                                  checkpoint_name: str = "checkpoint_final.pth") -> None:
        """Adds a stock nnU-Net model whose softmax is averaged with the diffusion probabilities (weight
        ``ensemble_weight``). It predicts from the same preprocessed input, so it must have the same labels and the
        same preprocessing (spacing, normalisation, axis order); anything else is refused here."""
        if self.plans_manager is None:
            raise RuntimeError("initialize the diffusion model before the ensemble model")
        folds = _check_model_folder(model_training_output_dir, use_folds, checkpoint_name, require_diffusion=False)
        other_dataset_json = load_json(join(model_training_output_dir, "dataset.json"))
        _check_same_labels(self.dataset_json, other_dataset_json, self.model_source, model_training_output_dir)
        stock = nnUNetPredictor(self.tile_step_size, self.use_gaussian, self.use_mirroring,
                                self.perform_everything_on_device, self.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
        stock.initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        _check_same_preprocessing(self.plans_manager, self.configuration_manager, stock.plans_manager,
                                  stock.configuration_manager, self.model_source, model_training_output_dir)
        self.ensemble_predictor, self.ensemble_source = stock, model_training_output_dir

    # ------------------------------------------------------------------ one case
    def case_seed(self, data: torch.Tensor, fold_index: int = 0, sample_index: int = 0) -> int | None:
        """The generator seed of one sample: a hash of (seed, the case's shape and content, fold, sample).
        Content (a strided subset of at most ~1M values) rather than position in the input list, so a case's
        result does not depend on which other cases are predicted or in which order."""
        if self.seed is None:
            return None
        flat = data.reshape(-1)
        stride = max(1, flat.numel() // 2**20)
        digest = hashlib.blake2b(digest_size=8)
        digest.update(repr((self.seed, tuple(data.shape), fold_index, sample_index)).encode())
        digest.update(flat[::stride].detach().float().cpu().numpy().tobytes())
        return int.from_bytes(digest.digest(), "little") & (2**63 - 1)

    @torch.inference_mode()
    def predict_case(self, data: torch.Tensor) -> CasePrediction:
        """data: preprocessed case (image channels, *spatial), 2D configurations as (c, 1, x, y) ->
        :class:`CasePrediction`. Loops over folds and samples, averages probabilities, adds the ensemble."""
        threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, threads))
        try:
            parameters = self.list_of_parameters or [None]
            total = len(parameters) * self.num_samples * self.sampler.num_inference_steps
            probabilities, steps = None, None
            with tqdm(total=total, desc="denoising steps", leave=False, disable=not self.allow_tqdm) as progress:
                for fold_index, fold_parameters in enumerate(parameters):
                    if fold_parameters is not None:
                        self.diffusion_network.load_state_dict(fold_parameters)
                    for sample_index in range(self.num_samples):
                        p, p_steps = self._sample(data, self.case_seed(data, fold_index, sample_index), progress)
                        probabilities = p if probabilities is None else probabilities.add_(p)
                        if p_steps is not None and steps is None:
                            steps = p_steps
                        elif p_steps is not None:
                            steps = [a.add_(b) for a, b in zip(steps, p_steps, strict=True)]
            count = len(parameters) * self.num_samples
            probabilities /= count
            if steps is not None:
                steps = [s.div_(count) for s in steps]
            if self.ensemble_predictor is not None and self.ensemble_weight > 0:
                stock_logits = self.ensemble_predictor.predict_logits_from_preprocessed_data(data)
                stock = self.label_manager.apply_inference_nonlin(stock_logits).cpu()
                probabilities = (1 - self.ensemble_weight) * probabilities + self.ensemble_weight * stock
            return CasePrediction(probabilities, steps)
        finally:
            torch.set_num_threads(threads)

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's per-case entry (also used by ``predict_single_npy_array`` and friends): log-probabilities."""
        return log_probabilities(self.predict_case(data).probabilities)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """The currently loaded weights only (what nnU-Net's final validation calls per case): log of the mean
        probabilities of ``num_samples`` samples, (C, *spatial) float32 on the CPU."""
        probabilities = None
        for sample_index in range(self.num_samples):
            p, _ = self._sample(input_image, self.case_seed(input_image, 0, sample_index), None)
            probabilities = p if probabilities is None else probabilities.add_(p)
        return log_probabilities(probabilities / self.num_samples)

    def _sample(self, data: torch.Tensor, seed: int | None, progress) -> tuple[torch.Tensor, list | None]:
        """One reverse process over the whole case with the loaded weights; results on the CPU. Runs with the
        arrays on the GPU when allowed and falls back to CPU arrays (same seed) if that runs out of memory."""
        if not isinstance(data, torch.Tensor) or data.ndim != 4:
            raise ValueError("data must be a 4D torch.Tensor (c, x, y, z); 2D configurations use (c, 1, x, y)")
        self.network = self.network.to(self.device)
        self.network.eval()
        padded, revert_padding = pad_nd_image(data, self.configuration_manager.patch_size, "constant", {"value": 0},
                                              True, None)
        slicers = self._internal_get_sliding_window_slicers(padded.shape[1:])
        crop = (slice(None), *revert_padding[1:])
        if self.perform_everything_on_device and self.device.type == "cuda":
            try:
                return self._reverse_process(padded, slicers, crop, seed, self.device, progress)
            except torch.cuda.OutOfMemoryError:
                print("Sampling with the arrays on the GPU ran out of memory; moving them to the CPU")
                empty_cache(self.device)
        return self._reverse_process(padded, slicers, crop, seed, torch.device("cpu"), progress)

    def _reverse_process(self, image: torch.Tensor, slicers: list, crop: tuple, seed: int | None,
                         results_device: torch.device, progress) -> tuple[torch.Tensor, list | None]:
        """The global-step reverse process on the whole case.

        The steps of ``diffusion.sampling_loop.sample_probabilities`` (same noise draws: x_T from the seeded
        generator, then the sampler's own; x0 = 2 softmax(logits) - 1; the previous x0 for self-conditioning, -1 at
        the first step), with a sliding-window denoiser over the whole case and every whole-case array updated in
        place: a step holds x_t and one logits buffer (two with self-conditioning), all float32 on
        ``results_device``, plus the tile weights; the sampler update runs in chunks (:class:`_ChunkedInPlaceUpdate`).

        image: padded case (c, *spatial); slicers: nnU-Net's tiles; crop: removes the padding.
        Returns the last step's probabilities (C, *unpadded spatial) and, with ``save_steps``, every step's, on the CPU.
        """
        net = self.diffusion_network
        image = image.to(results_device)
        spatial = image.shape[1:]
        if self.use_gaussian:
            gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                        value_scaling_factor=10, dtype=torch.float32, device=results_device)
        else:
            gaussian = torch.ones(tuple(self.configuration_manager.patch_size), device=results_device)
        weights = torch.zeros(spatial, dtype=torch.float32, device=results_device)
        for slicer in slicers:
            weights[slicer[1:]] += gaussian
        self_conditioning = net.config.self_conditioning
        buffers = [torch.empty((net.num_classes, *spatial), dtype=torch.float32, device=results_device)
                   for _ in range(2 if self_conditioning else 1)]
        denoiser = _StepDenoiser(self.network, net, "cuda" if self.device.type == "cuda" else None)
        update = _ChunkedInPlaceUpdate(self.sampler)
        generator = torch.Generator(device=results_device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        x_t = torch.randn((1, net.num_classes, *spatial), generator=generator, device=results_device)
        x0_previous = no_estimate_like(x_t[0]) if self_conditioning else None
        steps = [] if self.save_steps else None
        network, self.network = self.network, denoiser  # nnU-Net's mirroring calls self.network
        try:
            for index, t in enumerate(self.sampler.timesteps.tolist()):
                denoiser.timestep = t
                x0 = buffers[index % len(buffers)].zero_()
                for slicer in slicers:
                    parts = [image[slicer], x_t[0][slicer]]
                    if self_conditioning:
                        parts.append(x0_previous[slicer])
                    tile = torch.cat(parts)[None].to(self.device, non_blocking=True)
                    prediction = self._internal_maybe_mirror_and_predict(tile)[0].to(results_device)
                    x0[slicer] += prediction.mul_(gaussian)
                _x0_from_logits_in_place(x0.div_(weights))
                if steps is not None:
                    steps.append(probabilities_from_x0(x0[crop]).cpu())
                if progress is not None:
                    progress.update()
                update.step(x0[None], t, x_t, generator=generator)
                x0_previous = x0 if self_conditioning else None
        finally:
            self.network = network
        return probabilities_from_x0(x0[crop]).cpu(), steps

    # ------------------------------------------------------------------ many cases, files
    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        """nnU-Net's file-level entry; also records the diffusion settings in ``diffusion_settings.json``.
        ``num_processes_preprocessing=0`` preprocesses in this process, ``num_processes_segmentation_export=0``
        exports in this process.

        Before anything is written, every input case this call will predict is listed and read once
        (:meth:`check_input_files`): a bad input raises :class:`DiffusionPredictorError` with the output folder
        untouched, instead of failing half-way with some cases written."""
        output = output_folder_or_list_of_truncated_output_files
        self.check_input_files(list_of_lists_or_source_folder, output, save_probabilities, overwrite,
                               folder_with_segs_from_prev_stage, num_parts, part_id)
        folder = output if isinstance(output, str) else os.path.dirname(output[0]) if output else None
        if folder:
            os.makedirs(folder, exist_ok=True)
            temporary = partial_name(join(folder, "diffusion_settings")) + ".json"
            save_json(self.settings(), temporary, sort_keys=False)
            os.replace(temporary, join(folder, "diffusion_settings.json"))
            remove_partial_folder(folder)
        return super().predict_from_files(list_of_lists_or_source_folder, output, save_probabilities, overwrite,
                                          num_processes_preprocessing, num_processes_segmentation_export,
                                          folder_with_segs_from_prev_stage, num_parts, part_id)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files, save_probabilities=False,
                                      overwrite=True, folder_with_segs_from_prev_stage=None):
        """No worker processes: :meth:`predict_from_files` with in-process preprocessing and export."""
        return self.predict_from_files(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       save_probabilities, overwrite, 0, 0, folder_with_segs_from_prev_stage)

    def check_input_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files=None,
                          save_probabilities: bool = False, overwrite: bool = True,
                          folder_with_segs_from_prev_stage: str | None = None, num_parts: int = 1,
                          part_id: int = 0) -> list[list[str]]:
        """The cases :meth:`predict_from_files` with these arguments would predict (nnU-Net's selection: this part
        of ``num_parts``, without those already written when not ``overwrite``), each read once with the model's
        image reader. Raises :class:`DiffusionPredictorError` naming the folder or file for: a missing input folder,
        no file with the dataset's ending, a file not named ``<case>_XXXX<ending>``, a case without exactly the
        model's channels, a missing or unreadable file, channels nnU-Net's reader refuses to combine, NaN or
        infinite values. Costs one extra read of every input image."""
        source = list_of_lists_or_source_folder
        num_channels = len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))
        if isinstance(source, str):
            cases = list_input_cases(source, self.dataset_json["file_ending"], num_channels)
        elif all(isinstance(files, (list, tuple)) for files in source):
            cases = [list(files) for files in source]
        else:
            raise DiffusionPredictorError("the input must be a folder or a list of cases, each a list of channel files")
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its case counts; it will again
            cases, _, _ = self._manage_input_and_output_lists(
                cases, output_folder_or_list_of_truncated_output_files, folder_with_segs_from_prev_stage, overwrite,
                part_id, num_parts, save_probabilities)
        check_input_images(cases, self.plans_manager.image_reader_writer_class)
        return cases

    def settings(self) -> dict:
        """What decides the sampled segmentation besides the model weights and the input (JSON-serialisable):
        with these values, the same model folder and the same input, a run on the same device and software
        reproduces the output exactly (CPU; GPU kernels may differ in the last bits)."""
        config: DiffusionConfig = self.diffusion_network.config
        return {"model": self.model_source, "folds": self.folds, "checkpoint": self.checkpoint_name,
                "sampler": self.sampler_name or config.sampler,
                "sampler_class": type(self.sampler).__name__, "steps": self.sampler.num_inference_steps,
                "timesteps": [int(t) for t in self.sampler.timesteps.tolist()],
                "eta": getattr(self.sampler, "eta", None), "training_timesteps": config.num_timesteps,
                "schedule": config.schedule, "seed": self.seed,
                "seed_rule": "per case, fold and sample: blake2b(seed, case shape, fold, sample, case content)",
                "num_samples": self.num_samples, "save_steps": self.save_steps,
                "ensemble_with": self.ensemble_source,
                "ensemble_weight": self.ensemble_weight if self.ensemble_source else None,
                "tile_step_size": self.tile_step_size, "use_gaussian": self.use_gaussian,
                "use_mirroring": self.use_mirroring, "device": str(self.device),
                "perform_everything_on_device": self.perform_everything_on_device,
                "versions": {"nnunetv2_diffusion": __version__, "nnunetv2": package_version("nnunetv2"),
                             "torch": torch.__version__}}

    def _internal_get_data_iterator_from_lists_of_filenames(self, input_list_of_lists, seg_from_prev_stage_files,
                                                            output_filenames_truncated, num_processes: int):
        if num_processes > 0:
            return super()._internal_get_data_iterator_from_lists_of_filenames(
                input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated, num_processes)
        return self._preprocess_in_process(input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated)

    def _preprocess_in_process(self, input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated):
        """The items nnU-Net's preprocessing workers produce, made in this process one case at a time."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)
        for index, files in enumerate(input_list_of_lists):
            previous = seg_from_prev_stage_files[index] if seg_from_prev_stage_files is not None else None
            data, seg, properties = preprocessor.run_case(files, previous, self.plans_manager,
                                                          self.configuration_manager, self.dataset_json)
            if previous is not None:
                data = np.vstack((data, convert_labelmap_to_one_hot(seg[0], self.label_manager.foreground_labels,
                                                                    data.dtype)))
            yield {"data": torch.from_numpy(data).float().contiguous(), "data_properties": properties,
                   "ofile": output_filenames_truncated[index] if output_filenames_truncated is not None else None}

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """Predicts every case of nnU-Net's preprocessing iterator and exports it (in a spawn pool like nnU-Net's,
        or in this process when ``num_processes_segmentation_export`` is 0). Items with ``ofile`` None return
        nnU-Net's (segmentation[, probabilities]) instead of writing files."""
        pool = (multiprocessing.get_context("spawn").Pool(num_processes_segmentation_export)
                if num_processes_segmentation_export > 0 else None)
        workers = list(pool._pool) if pool is not None else []
        pending, returned, folders = [], [], set()

        def submit(function, arguments):
            if pool is None:
                return _Finished(function(*arguments))
            return pool.apply_async(function, arguments)

        try:
            for item in tqdm(data_iterator, desc="cases", unit="case", disable=not self.allow_tqdm):
                data = item["data"]
                if isinstance(data, str):  # nnU-Net's workers may hand over large cases as a temporary .npy
                    path, data = data, torch.from_numpy(np.load(data))
                    os.remove(path)
                ofile, properties = item["ofile"], item["data_properties"]
                print(f"\nPredicting {os.path.basename(ofile) if ofile else f'image of shape {tuple(data.shape)}'}")
                while pool is not None and check_workers_alive_and_busy(pool, workers, pending, allowed_num_queued=2):
                    sleep(0.1)
                case = self.predict_case(torch.as_tensor(data))
                log_p = log_probabilities(case.probabilities).numpy()
                if ofile is None:
                    returned.append(submit(convert_predicted_logits_to_segmentation_with_correct_shape,
                                           (log_p, self.plans_manager, self.configuration_manager, self.label_manager,
                                            properties, save_probabilities)))
                    pending.append(returned[-1])
                    continue
                folder, name = os.path.dirname(os.path.abspath(ofile)), os.path.basename(ofile)
                folders.add(folder)
                common = (properties, self.configuration_manager, self.plans_manager, self.dataset_json)
                pending.append(submit(export_prediction_atomically, (log_p, *common, ofile, save_probabilities)))
                returned.append(pending[-1])
                if self.num_samples > 1:
                    os.makedirs(join(folder, UNCERTAINTY_FOLDER), exist_ok=True)
                    folders.add(join(folder, UNCERTAINTY_FOLDER))
                    pending.append(submit(export_uncertainty_map,
                                          (log_p, *common, join(folder, UNCERTAINTY_FOLDER, f"{name}_entropy"))))
                if case.step_probabilities is not None:
                    os.makedirs(join(folder, STEPS_FOLDER), exist_ok=True)
                    folders.add(join(folder, STEPS_FOLDER))
                    for k, step in enumerate(case.step_probabilities, start=1):
                        pending.append(submit(export_prediction_atomically,
                                              (log_probabilities(step).numpy(), *common,
                                               join(folder, STEPS_FOLDER, f"{name}_step{k}"), False)))
            results = {id(r): _wait_for(r, workers) for r in pending}
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            for folder in folders:
                remove_partial_folder(folder)
        if isinstance(data_iterator, MultiThreadedAugmenter):
            data_iterator._finish()
        compute_gaussian.cache_clear()
        empty_cache(self.device)
        return [results[id(r)] for r in returned]


class _Finished:
    """The result of a job that ran in this process, with the AsyncResult methods the collection loop uses."""

    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self, timeout=None):
        return self.value


def _wait_for(result, workers: list):
    """``result.get()``, failing instead of hanging if an export worker dies (e.g. killed for memory)."""
    while True:
        if not all(worker.is_alive() for worker in workers):
            raise RuntimeError("A segmentation export worker died, likely killed by the OS for lack of RAM")
        try:
            return result.get(timeout=0.1)
        except multiprocessing.TimeoutError:
            pass


# ---------------------------------------------------------------------------------------------- input checks
def _check_options(sampler, steps, eta, num_samples, ensemble_weight) -> None:
    """The checks that need no model."""
    if sampler is not None and sampler not in SAMPLERS:
        raise DiffusionPredictorError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DiffusionPredictorError(f"steps must be a positive integer (got {steps!r})")
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise DiffusionPredictorError(f"eta must be in [0, 1] (got {eta})")
    if eta is not None and sampler == "ddpm":
        raise DiffusionPredictorError("eta applies to the ddim sampler only (got --sampler ddpm with --eta)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise DiffusionPredictorError(f"num_samples must be an integer >= 1 (got {num_samples!r})")
    if not 0.0 <= ensemble_weight <= 1.0:
        raise DiffusionPredictorError(f"ensemble_weight must be in [0, 1] (got {ensemble_weight})")


def read_json_file(path: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file raises DiffusionPredictorError."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffusionPredictorError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(content, dict):
        raise DiffusionPredictorError(f"{path} does not hold a JSON object")
    return content


def _check_model_folder(folder: str, use_folds, checkpoint_name: str, require_diffusion: bool) -> list:
    """Checks a trained model folder and returns its folds: readable dataset.json and plans.json, every checkpoint
    loadable weights-only (:func:`load_checkpoint_file`) and trained for a configuration the plans hold; with
    ``require_diffusion`` also that every checkpoint comes from a diffusion trainer and carries the same diffusion
    settings. nnU-Net's loader then reads the checkpoints again with ``weights_only=False``; the weights-only load
    here refuses, before that, any file holding objects other than tensors and plain data."""
    if not isdir(folder):
        raise DiffusionPredictorError(f"model folder {folder} does not exist")
    contents = {}
    for name in ("dataset.json", "plans.json"):
        if not isfile(join(folder, name)):
            raise DiffusionPredictorError(f"{folder} is not a trained nnU-Net model folder: {name} is missing")
        contents[name] = read_json_file(join(folder, name))
    configurations = contents["plans.json"].get("configurations", {})
    if use_folds is None:
        use_folds = nnUNetPredictor.auto_detect_available_folds(folder, checkpoint_name)
    folds = [use_folds] if isinstance(use_folds, (str, int)) else list(use_folds)
    folds = [f if f == "all" else int(f) for f in folds]
    if not folds:
        raise DiffusionPredictorError(f"{folder} has no fold_X/{checkpoint_name}")
    configs = {}
    for fold in folds:
        path = join(folder, f"fold_{fold}", checkpoint_name)
        if not isfile(path):
            raise DiffusionPredictorError(f"checkpoint {path} does not exist (choose the folds with -f)")
        try:
            checkpoint = load_checkpoint_file(path)
        except CheckpointError as e:
            raise DiffusionPredictorError(str(e)) from None
        configuration = (checkpoint.get("init_args") or {}).get("configuration")
        if configuration not in configurations:
            raise DiffusionPredictorError(f"{join(folder, 'plans.json')} has no configuration {configuration!r}, the "
                                          f"one {path} was trained with (it has: {', '.join(configurations)})")
        if not require_diffusion:
            continue
        trainer_name = checkpoint.get("trainer_name")
        try:
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        except (RuntimeError, AssertionError):
            raise DiffusionPredictorError(f"{folder} was trained with {trainer_name}, which cannot be found "
                                          f"(is the package that defines it installed?)") from None
        if not issubclass(trainer_class, nnUNetTrainerDiff):
            raise DiffusionPredictorError(f"{folder} is not a diffusion model: its trainer {trainer_name} is not an "
                                          f"nnUNetTrainerDiff (use nnUNetv2_predict for stock models)")
        extra_state = checkpoint.get("network_weights", {}).get("_extra_state")
        if not isinstance(extra_state, dict):
            raise DiffusionPredictorError(f"checkpoint {path} has no diffusion settings (network_weights lacks "
                                          f"'_extra_state'); it was not saved by a diffusion network")
        try:
            configs[fold] = DiffusionConfig.from_dict(extra_state)
        except (TypeError, ValueError) as e:
            raise DiffusionPredictorError(f"checkpoint {path} has invalid diffusion settings: {e}") from None
    if len(set(configs.values())) > 1:
        raise DiffusionPredictorError(f"the folds of {folder} were trained with different diffusion settings: "
                                      f"{ {f: c.to_dict() for f, c in configs.items()} }")
    return folds


def list_input_cases(folder: str, file_ending: str, num_channels: int) -> list[list[str]]:
    """The cases of an input folder as nnU-Net lists them (``create_lists_from_splitted_dataset_folder``: files
    ``<case>_XXXX<file_ending>``, one per channel, sorted), without its process pool and with the checks it lacks:
    the folder exists and holds files with the ending, every such file is named ``<case>_XXXX<ending>``, every case
    has exactly the channels ``_0000`` .. of the model."""
    if not isdir(folder):
        raise DiffusionPredictorError(f"input folder {folder} does not exist")
    names = subfiles(folder, suffix=file_ending, join=False, sort=True)
    if not names:
        raise DiffusionPredictorError(f"input folder {folder} holds no {file_ending} files (the file ending in the "
                                      f"model's dataset.json); images must be named <case>_0000{file_ending}")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending))
    channels_of: dict[str, dict[int, str]] = {}
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            raise DiffusionPredictorError(f"input file {join(folder, name)} is not named <case>_XXXX{file_ending} "
                                          f"(XXXX: the 4-digit channel index nnU-Net expects)")
        channels_of.setdefault(match.group(1), {})[int(match.group(2))] = join(folder, name)
    cases = []
    for case, channels in sorted(channels_of.items()):
        if sorted(channels) != list(range(num_channels)):
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise DiffusionPredictorError(f"case {case} in {folder} has channel files {found}; the model takes "
                                          f"{num_channels} channel(s), _0000 to _{num_channels - 1:04d}")
        cases.append([channels[c] for c in range(num_channels)])
    return cases


def check_input_images(cases: list[list[str]], reader_class) -> None:
    """Reads every case (a list of channel files) with nnU-Net's reader class, as its preprocessing will, and refuses
    a missing, unreadable or truncated file, channels the reader will not combine (other shape or spacing) and NaN or
    infinite values, which would spread through normalisation into the whole prediction. NIfTI files go through
    :func:`nifti_file_problem` first, because SimpleITK reads truncated files and NaN voxels without complaint (as
    zeros)."""
    for files in cases:
        for path in files:
            if not isfile(path):
                raise DiffusionPredictorError(f"input image {path} does not exist")
            problem = nifti_file_problem(path) if path.endswith(NIFTI_ENDINGS) else None
            if problem is not None:  # SimpleITK would read it, with zeros for missing or NaN voxels
                raise DiffusionPredictorError(f"input image {path}: {problem}")
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                data, _ = reader_class().read_images(files)
        except Exception as e:  # readers raise RuntimeError, OSError, ValueError, ImageFileError, ... when damaged
            # SimpleITK opens with "Exception thrown in <function>: <source file>:<line>:", then says what happened
            reason = " ".join(line.strip() for line in str(e).strip().splitlines()
                              if not line.startswith("Exception thrown in"))
            errors = [line for line in said.getvalue().splitlines() if line.startswith("ERROR")]
            reason = reason or (errors[0] if errors else type(e).__name__)
            raise DiffusionPredictorError(f"input image {', '.join(files)} cannot be read by {reader_class.__name__}: "
                                          f"{reason}") from None
        for channel in range(len(data)):
            non_finite = int(np.count_nonzero(~np.isfinite(data[channel])))
            if non_finite:
                name = files[channel] if len(files) == len(data) else ", ".join(files)  # a file may hold channels
                raise DiffusionPredictorError(f"input image {name} holds {non_finite} NaN or infinite values")


def _check_same_labels(ours: dict, theirs: dict, our_source: str, their_source: str) -> None:
    for key in ("labels", "regions_class_order"):
        if ours.get(key) != theirs.get(key):
            raise DiffusionPredictorError(f"--ensemble_with {their_source} has other {key} than {our_source}: "
                                          f"{theirs.get(key)} vs {ours.get(key)}")
    if len(ours.get("channel_names", ours.get("modality", {}))) != \
            len(theirs.get("channel_names", theirs.get("modality", {}))):
        raise DiffusionPredictorError(f"--ensemble_with {their_source} takes another number of input channels than "
                                      f"{our_source}")


def _check_same_preprocessing(our_plans: PlansManager, our_configuration, their_plans: PlansManager,
                              their_configuration, our_source: str, their_source: str) -> None:
    """Both models must see the same preprocessed array of the same dataset: same axis order, target spacing,
    normalisation and resampling of the image, no cascade input. Patch size and architecture may differ."""
    if our_plans.dataset_name != their_plans.dataset_name:
        raise DiffusionPredictorError(f"--ensemble_with {their_source} was trained on {their_plans.dataset_name}, "
                                      f"{our_source} on {our_plans.dataset_name}")
    fields = [("transpose_forward", our_plans.transpose_forward, their_plans.transpose_forward),
              ("foreground_intensity_properties_per_channel",
               our_plans.plans.get("foreground_intensity_properties_per_channel"),
               their_plans.plans.get("foreground_intensity_properties_per_channel"))]
    for key in ("spacing", "normalization_schemes", "use_mask_for_norm", "preprocessor_name", "resampling_fn_data",
                "resampling_fn_data_kwargs"):
        fields.append((key, our_configuration.configuration.get(key), their_configuration.configuration.get(key)))
    for key, ours, theirs in fields:
        if _as_lists(ours) != _as_lists(theirs):
            raise DiffusionPredictorError(f"--ensemble_with {their_source} preprocesses differently from {our_source} "
                                          f"({key}: {theirs} vs {ours}); combine their --save_probabilities outputs "
                                          f"with nnUNetv2_ensemble instead")
    if their_configuration.previous_stage_name is not None:
        raise DiffusionPredictorError(f"--ensemble_with {their_source} is a cascade stage; cascades are not supported "
                                      f"for ensembling")


def _as_lists(value):
    """JSON-like comparison: tuples and lists are the same thing in plans."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value
