"""Diffusion segmentation inside nnU-Net's predictor: global-step sliding-window sampling (docs/design.md, "How it
sits in nnU-Net").

At every denoising step, nnU-Net's own sliding-window machinery (its tile positions, Gaussian tile weights and
mirroring) predicts x0 logits over the whole case from the image and the current whole-case noisy mask x_t; then one
DDPM/DDIM update moves the whole-case x_t to the next timestep (``inference/global_step.py``). Tiles therefore share
one noise field and agree at every step, and one step costs about one stock nnU-Net prediction.

The result goes back to nnU-Net as "logits" its inference nonlinearity maps back to the probabilities (log p for
softmax, logit p for the sigmoid of region labels: ``mask_encoding.export_logits``), so resampling, export, region
handling, ``--save_probabilities`` and ``nnUNetv2_ensemble`` work unchanged.

Compared with the stock predictor: folds are averaged as probabilities (not logits); accumulation is float32 (stock:
float16) and the whole-case state (x_t and one logits buffer) is updated in place; exports are written under
temporary names and renamed when complete; optional K samples per case with an entropy map, per-step segmentations
and a probability ensemble with a stock nnU-Net model.
"""

import contextlib
import io
import os
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from tqdm import tqdm

from nnunetv2_diffusion import __version__
from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.mask_encoding import entropy, export_logits, probabilities_from_x0
from nnunetv2_diffusion.diffusion.sampling_loop import reverse_process
from nnunetv2_diffusion.diffusion.seeding import content_seed
from nnunetv2_diffusion.inference.ensemble_choice import DEFAULT_ENSEMBLE_WEIGHT, read_ensemble_choice
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.export import (
    export_prediction_atomically,
    remove_partial_folder,
    write_atomically,
)
from nnunetv2_diffusion.inference.export_jobs import ExportJobs, run_in_order
from nnunetv2_diffusion.inference.global_step import (
    ChunkedInPlaceUpdate,
    StepDenoiser,
    WholeCaseDenoiser,
    tile_weights,
)
from nnunetv2_diffusion.inference.input_checks import (
    check_input_images,
    check_predictor_options,
    check_previous_stage_files,
    list_input_cases,
)
from nnunetv2_diffusion.inference.model_folder import check_model_folder, check_same_labels, check_same_preprocessing
from nnunetv2_diffusion.inference.uncertainty import export_uncertainty_maps, write_uncertainty_table
from nnunetv2_diffusion.networks.diffusion_unet import DiffusionSegmentationUNet
from nnunetv2_diffusion.networks.wrappers import unwrap_network

__all__ = ["DEFAULT_SEED", "CasePrediction", "DiffusionPredictorError", "nnUNetDiffusionPredictor"]

DEFAULT_SAMPLE_BATCH = None
"""By default all K samples run together: 0.99-1.13x the sequential speed on HC18, 2.1x for K = 8 on Hippocampus
(docs/uncertainty.md, "Cost")."""
DEFAULT_SEED = 0
"""Inference is reproducible by default, like stock nnU-Net's; ``seed=None`` draws fresh noise every run."""

SAMPLES_FOLDER = "samples"
STEPS_FOLDER = "steps"
UNCERTAINTY_FOLDER = "uncertainty"
# Subfolders, not files next to the segmentations: nnU-Net's evaluation and ensembling read every file with the
# dataset's ending (or .npz) in the output folder and expect one per case.


@dataclass
class CasePrediction:
    """What the predictor computes for one preprocessed case.

    probabilities: (C, *preprocessed spatial) float32 on the CPU: the mean over folds and samples, ensembled with
        the stock model if one is set.
    step_probabilities: with ``save_steps``, the diffusion model's mean probabilities after each denoising step
        (same shape; the last equals ``probabilities`` without an ensemble), else None.
    mutual_information: with K > 1 samples, (*preprocessed spatial) float32 in nats: the entropy of the diffusion
        model's mean probabilities minus the mean entropy of its K samples (of every fold): how much the samples
        disagree; the stock model of an ensemble does not enter it. Else None.
    sample_probabilities: with ``save_samples``, each sample's own probabilities (same shape), fold-major (fold 0's K
        samples, then fold 1's); their mean is the diffusion part of ``probabilities``. Else None.
    """

    probabilities: torch.Tensor
    step_probabilities: list[torch.Tensor] | None = None
    mutual_information: torch.Tensor | None = None
    sample_probabilities: list[torch.Tensor] | None = None


class nnUNetDiffusionPredictor(nnUNetPredictor):
    """nnU-Net's predictor with the global-step diffusion sampler.

    The first eight arguments are nnU-Net's (the trainer's final validation constructs the predictor with them).
    Diffusion options (keyword-only) default to the settings stored in the model's checkpoint:

    sampler: 'ddpm' or 'ddim'; steps: denoising steps in [1, T]; eta: DDIM noise in [0, 1] (DDIM only).
    seed: the noise of every case comes from a generator seeded with (seed, the case's content, fold, sample), so a
        case gets the same result whatever the order or company it is predicted in; None: fresh noise every run.
    num_samples: K independent samples per case (and fold), probabilities averaged; with K > 1 the export also
        writes, in the input image's geometry and in nats, ``<output>/uncertainty/<case>_entropy<ending>`` (entropy
        of the exported probabilities) and ``<case>_mutual_information<ending>`` (disagreement of the samples; ``.npz``
        with the array under 'map' for PNG/BMP/TIFF datasets), and
        one row per case into ``<output>/uncertainty/uncertainty_per_case.csv`` (``inference/uncertainty.py``). With
        DDIM at eta 0 samples differ only through their starting noise x_T.
    sample_batch: how many of the K samples run together, their tiles batched into one network call (each keeps its
        own seeded noise, so the result does not depend on it beyond floating-point rounding); costs that many
        whole-case arrays and tile batches of memory. None (default): all ``num_samples`` together.
    save_steps: also write the segmentation after every denoising step to ``<output>/steps/<case>_step<k><ending>``
        (k = 1..steps); per-step probabilities are kept in memory only then.
    save_samples: also write each sample's own segmentation (and, with ``save_probabilities``, its probabilities) to
        ``<output>/samples/<case>_sample<k><ending>`` (k = 1..folds x K, fold-major). Sample k's noise does not depend
        on K, so the first k' samples of a K-sample run are the samples of a k'-sample run: one run gives every
        smaller K.
    ensemble_weight: w of ``(1 - w) p_diffusion + w p_stock`` once :meth:`initialize_ensemble_model` set a stock
        model; averaged in preprocessed space, before export. None: the weight chosen on validation cases for that
        stock model (``nnUNetv2_diffusion_choose_ensemble``, recorded in the model folder), else 0.5.
    """

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 perform_everything_on_device: bool = True, device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
                 verbose: bool = False, verbose_preprocessing: bool = False, allow_tqdm: bool = True, *,
                 sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                 seed: int | None = DEFAULT_SEED, num_samples: int = 1, save_steps: bool = False,
                 ensemble_weight: float | None = None, sample_batch: int | None = DEFAULT_SAMPLE_BATCH,
                 save_samples: bool = False):
        check_predictor_options(sampler, steps, eta, num_samples, ensemble_weight)
        if not 0 < tile_step_size <= 1:  # nnU-Net asserts it only when the first case is tiled
            raise DiffusionPredictorError(f"tile_step_size (-step_size) must be in (0, 1] (got {tile_step_size})")
        if sample_batch is not None and sample_batch < 1:
            raise DiffusionPredictorError(f"sample_batch must be >= 1 (got {sample_batch})")
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device, verbose,
                         verbose_preprocessing, allow_tqdm)
        self.sampler_name, self.num_steps, self.eta = sampler, steps, eta
        self.seed, self.num_samples, self.save_steps = seed, num_samples, save_steps
        self.sample_batch, self.save_samples = sample_batch or num_samples, save_samples
        self.ensemble_weight = ensemble_weight
        self.ensemble_weight_source = "given" if ensemble_weight is not None else None
        self.model_folder: str | None = None
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
        folds = check_model_folder(model_training_output_dir, use_folds, checkpoint_name, require_diffusion=True)
        super().initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        self.folds, self.checkpoint_name = folds, checkpoint_name
        self.model_folder = model_training_output_dir
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
        if self.regions != self.label_manager.has_regions:
            raise DiffusionPredictorError(
                f"{source}: the network was trained on {'regions' if self.regions else 'exclusive labels'}, but the "
                f"dataset.json it came with {'defines' if self.label_manager.has_regions else 'has no'} "
                f"regions_class_order; use the dataset.json of the training run")
        self.sampler = self._make_sampler(source)

    @property
    def diffusion_network(self) -> DiffusionSegmentationUNet:
        return unwrap_network(self.network)

    @property
    def regions(self) -> bool:
        """Whether the mask channels are nnU-Net regions (sigmoid each) rather than exclusive classes (softmax)."""
        return self.diffusion_network.config.regions

    def _make_sampler(self, source: str):
        try:
            return self.diffusion_network.make_sampler(self.sampler_name, self.num_steps, self.eta)
        except ValueError as e:
            raise DiffusionPredictorError(f"{source} (samples with {self.diffusion_network.config.sampler}, trained "
                                          f"with {self.diffusion_network.config.num_timesteps} timesteps): "
                                          f"{e}") from None

    def initialize_ensemble_model(self, model_training_output_dir: str, use_folds=None,
                                  checkpoint_name: str = "checkpoint_final.pth") -> None:
        """Adds a stock nnU-Net model whose softmax is averaged with the diffusion probabilities (weight
        ``ensemble_weight``). It predicts from the same preprocessed input, so it must have the same labels and the
        same preprocessing (spacing, normalisation, axis order); anything else is refused here."""
        if self.plans_manager is None:
            raise RuntimeError("initialize the diffusion model before the ensemble model")
        folds = check_model_folder(model_training_output_dir, use_folds, checkpoint_name, require_diffusion=False)
        other_dataset_json = load_json(join(model_training_output_dir, "dataset.json"))
        check_same_labels(self.dataset_json, other_dataset_json, self.model_source, model_training_output_dir)
        stock = nnUNetPredictor(self.tile_step_size, self.use_gaussian, self.use_mirroring,
                                self.perform_everything_on_device, self.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
        stock.initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        check_same_preprocessing(self.plans_manager, self.configuration_manager, stock.plans_manager,
                                 stock.configuration_manager, self.model_source, model_training_output_dir)
        self.ensemble_predictor, self.ensemble_source = stock, model_training_output_dir
        if self.ensemble_weight is None:
            choice = read_ensemble_choice(self.model_folder, model_training_output_dir) if self.model_folder else None
            self.ensemble_weight = choice["weight"] if choice else DEFAULT_ENSEMBLE_WEIGHT
            self.ensemble_weight_source = "validation" if choice else "default"

    # ------------------------------------------------------------------ one case
    def case_seed(self, data: torch.Tensor, fold: int | str = 0, sample_index: int = 0) -> int | None:
        """The generator seed of one sample: a hash of (seed, the case's shape and content, fold, sample).
        Content (every value of a small case, a strided 1M to 2M of a large one) rather than position in the input
        list, so a case's result does not depend on which other cases are predicted or in which order; the fold's
        id (0-4 or 'all') rather than its position in ``-f``, so ``-f 1`` samples fold 1 as ``-f 0 1`` does."""
        if self.seed is None:
            return None
        return content_seed(data, self.seed, fold, sample_index)

    @torch.inference_mode()
    def predict_case(self, data: torch.Tensor) -> CasePrediction:
        """data: preprocessed case (image channels, *spatial), 2D configurations as (c, 1, x, y) ->
        :class:`CasePrediction`. Loops over folds and samples, averages probabilities, adds the ensemble."""
        threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, threads))
        try:
            parameters = self.list_of_parameters or [None]
            total = len(parameters) * self.num_samples * self.sampler.num_inference_steps
            probabilities, steps, expected_entropy = None, None, None
            kept = [] if self.save_samples else None
            with tqdm(total=total, desc="denoising steps", leave=False, disable=not self.allow_tqdm) as progress:
                for fold, fold_parameters in zip(self._fold_ids(len(parameters)), parameters, strict=True):
                    if fold_parameters is not None:
                        self.diffusion_network.load_state_dict(fold_parameters)
                    seeds = [self.case_seed(data, fold, k) for k in range(self.num_samples)]
                    samples, sample_steps = self._sample(data, seeds, progress)
                    for p, p_steps in zip(samples, sample_steps, strict=True):
                        if kept is not None:  # a copy: the running sum below starts as the first sample itself
                            kept.append(p.clone())
                        probabilities = p if probabilities is None else probabilities.add_(p)
                        if self.num_samples > 1:  # the mean entropy of the samples, for the mutual information
                            h = entropy(p, self.regions)
                            expected_entropy = h if expected_entropy is None else expected_entropy.add_(h)
                        if p_steps is not None:
                            steps = p_steps if steps is None else [a.add_(b) for a, b in zip(steps, p_steps,
                                                                                               strict=True)]
            count = len(parameters) * self.num_samples
            probabilities /= count
            if steps is not None:
                steps = [s.div_(count) for s in steps]
            mutual_information = None
            if expected_entropy is not None:  # >= 0 up to rounding: entropy is concave
                mutual_information = (entropy(probabilities, self.regions)
                                      - expected_entropy.div_(count)).clamp_min_(0)
            if self.ensemble_predictor is not None and self.ensemble_weight > 0:
                stock_logits = self.ensemble_predictor.predict_logits_from_preprocessed_data(data)
                stock = self.label_manager.apply_inference_nonlin(stock_logits).cpu()
                probabilities = (1 - self.ensemble_weight) * probabilities + self.ensemble_weight * stock
            return CasePrediction(probabilities, steps, mutual_information, kept)
        finally:
            torch.set_num_threads(threads)

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's per-case entry (also used by ``predict_single_npy_array`` and friends): log-probabilities."""
        return export_logits(self.predict_case(data).probabilities, self.regions)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """The currently loaded weights only (what nnU-Net's final validation calls per case): the mean probabilities
        of ``num_samples`` samples as ``export_logits`` (log p; logit p for regions), (C, *spatial) float32 on the
        CPU."""
        seeds = [self.case_seed(input_image, self._fold_ids(1)[0], k) for k in range(self.num_samples)]
        samples, _ = self._sample(input_image, seeds, None)
        return export_logits(torch.stack(samples).mean(0), self.regions)

    def _fold_ids(self, count: int) -> list:
        """The folds of the ``count`` loaded parameter sets: the model folder's (or the validating trainer's) fold
        ids, else positions (a predictor given its parameters by hand)."""
        return list(self.folds) if self.folds is not None and len(self.folds) == count else list(range(count))

    def _sample(self, data: torch.Tensor, seeds: list[int | None], progress) -> tuple[list, list]:
        """One reverse process per seed over the whole case with the loaded weights, ``sample_batch`` of them at a
        time; per sample its probabilities (C, *spatial) and its per-step list (None without ``save_steps``), on the
        CPU."""
        samples, steps = [], []
        for start in range(0, len(seeds), self.sample_batch):
            batch_samples, batch_steps = self._sample_batch(data, seeds[start:start + self.sample_batch], progress)
            samples += batch_samples
            steps += batch_steps
        return samples, steps

    def _sample_batch(self, data: torch.Tensor, seeds: list[int | None], progress) -> tuple[list, list]:
        """:meth:`_sample` for samples that run together. Runs with the arrays on the GPU when allowed and falls
        back to CPU arrays (same seeds) if that runs out of memory."""
        if not isinstance(data, torch.Tensor) or data.ndim != 4:
            raise ValueError("data must be a 4D torch.Tensor (c, x, y, z); 2D configurations use (c, 1, x, y)")
        channels = self.diffusion_network.num_image_channels
        if data.shape[0] != channels:  # the network would take the surplus channels for its noisy mask
            raise DiffusionPredictorError(f"the preprocessed case has {data.shape[0]} channels, the network takes "
                                          f"{channels} image channels (a cascade stage's included)")
        self.network = self.network.to(self.device)
        self.network.eval()
        padded, revert_padding = pad_nd_image(data, self.configuration_manager.patch_size, "constant", {"value": 0},
                                              True, None)
        slicers = self._internal_get_sliding_window_slicers(padded.shape[1:])
        crop = (slice(None), *revert_padding[1:])
        if self.perform_everything_on_device and self.device.type == "cuda":
            try:
                return self._reverse_process(padded, slicers, crop, seeds, self.device, progress)
            except torch.cuda.OutOfMemoryError:
                print("Sampling with the arrays on the GPU ran out of memory; moving them to the CPU")
                empty_cache(self.device)
        return self._reverse_process(padded, slicers, crop, seeds, torch.device("cpu"), progress)

    def _whole_case_denoiser(self, image: torch.Tensor, slicers: list, results_device,
                             batch_size: int = 1) -> WholeCaseDenoiser:
        gaussian, weights = tile_weights(self.configuration_manager.patch_size, slicers, image.shape[1:],
                                         self.use_gaussian, results_device)
        denoiser = StepDenoiser(self.network, self.diffusion_network, "cuda" if self.device.type == "cuda" else None)
        return WholeCaseDenoiser(image, slicers, gaussian, weights, denoiser, self._internal_maybe_mirror_and_predict,
                                 self.device, batch_size)

    @contextlib.contextmanager
    def _mirroring_calls(self, whole_case: WholeCaseDenoiser):
        """nnU-Net's mirroring calls ``self.network``: within the block that is the step denoiser."""
        network, self.network = self.network, whole_case.denoiser
        try:
            yield
        finally:
            self.network = network

    def _reverse_process(self, image: torch.Tensor, slicers: list, crop: tuple, seeds: list[int | None],
                         results_device: torch.device, progress) -> tuple[list, list]:
        """The global-step reverse process on the whole case for B = len(seeds) samples at once:
        :func:`diffusion.sampling_loop.reverse_process` (each sample's x_T from its own seeded generator, then that
        generator's draws) with a sliding-window denoiser over the whole case that batches the samples' tiles
        (:class:`WholeCaseDenoiser`) and the sampler update in place, in chunks (:class:`ChunkedInPlaceUpdate`), all
        float32 on ``results_device``.

        image: padded case (c, *spatial); slicers: nnU-Net's tiles; crop: removes the padding.
        Returns per sample the last step's probabilities (C, *unpadded spatial) and, with ``save_steps``, the list of
        every step's (else None), on the CPU.
        """
        image = image.to(results_device)
        whole_case = self._whole_case_denoiser(image, slicers, results_device, len(seeds))
        generators = []
        for seed in seeds:
            generator = torch.Generator(device=results_device)
            generators.append(generator.manual_seed(seed) if seed is not None else generator)
            if seed is None:
                generator.seed()
        x_t = torch.cat([torch.randn((1, self.diffusion_network.num_classes, *image.shape[1:]), generator=generator,
                                     device=results_device) for generator in generators])
        steps = [[] for _ in seeds] if self.save_steps else None

        def on_step(_index, _t, x0):
            if steps is not None:
                for sample_steps, sample in zip(steps, x0, strict=True):
                    sample_steps.append(probabilities_from_x0(sample[crop]).cpu())
            if progress is not None:
                progress.update(len(seeds))

        with self._mirroring_calls(whole_case):
            x0 = reverse_process(whole_case, x_t, ChunkedInPlaceUpdate(self.sampler), generator=generators,
                                 on_step=on_step)
        return [probabilities_from_x0(sample[crop]).cpu() for sample in x0], steps or [None] * len(seeds)

    @torch.inference_mode()
    def denoise_case(self, data: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """One denoising step of the loaded weights over the whole case, for a given noisy mask: data (c, *spatial)
        preprocessed (2D as (c, 1, x, y)), x_t (C, *spatial) any values, t a training timestep in [0, T-1] ->
        probabilities of x0_hat (C, *spatial) float32 on the CPU. Self-conditioned models get no previous estimate.
        This is how ``benchmarks/conditioning_probe.py`` sees what the mask input and tau change."""
        self.network = self.network.to(self.device)
        self.network.eval()
        patch = self.configuration_manager.patch_size
        image, revert_padding = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        x_t, _ = pad_nd_image(x_t.float(), patch, "constant", {"value": 0}, True, None)
        whole_case = self._whole_case_denoiser(image, self._internal_get_sliding_window_slicers(image.shape[1:]),
                                               torch.device("cpu"))
        with self._mirroring_calls(whole_case):
            x0 = whole_case(x_t[None], t, None)
        return probabilities_from_x0(x0[0][(slice(None), *revert_padding[1:])]).cpu()

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
            settings = self.settings()
            write_atomically(join(folder, "diffusion_settings.json"), lambda path: save_json(settings, path,
                                                                                            sort_keys=False))
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
        infinite values, and for a cascade stage a missing previous-stage segmentation. Costs one extra read of every
        input image."""
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
        if self.configuration_manager.previous_stage_name is not None:
            check_previous_stage_files(cases, folder_with_segs_from_prev_stage, self.dataset_json["file_ending"],
                                       self.configuration_manager.previous_stage_name)
        elif folder_with_segs_from_prev_stage is not None:  # nnU-Net would stack them onto the image channels
            raise DiffusionPredictorError(f"previous-stage segmentations {folder_with_segs_from_prev_stage} were "
                                          f"given, but the model's configuration is not a cascade stage: leave out "
                                          f"-prev_stage_predictions")
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
                "seed_rule": "per case, fold id and sample: blake2b(seed, case shape, fold, sample, case content)",
                "num_samples": self.num_samples, "sample_batch": self.sample_batch, "save_steps": self.save_steps,
                "save_samples": self.save_samples,
                "ensemble_with": self.ensemble_source,
                "ensemble_weight": self.ensemble_weight if self.ensemble_source else None,
                "ensemble_weight_source": self.ensemble_weight_source if self.ensemble_source else None,
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
        returned, uncertainty_folders = [], set()
        with ExportJobs(num_processes_segmentation_export) as jobs:
            for item in tqdm(data_iterator, desc="cases", unit="case", disable=not self.allow_tqdm):
                data = item["data"]
                if isinstance(data, str):  # nnU-Net's workers may hand over large cases as a temporary .npy
                    path, data = data, torch.from_numpy(np.load(data))
                    os.remove(path)
                ofile, properties = item["ofile"], item["data_properties"]
                print(f"\nPredicting {os.path.basename(ofile) if ofile else f'image of shape {tuple(data.shape)}'}")
                jobs.wait_for_capacity()
                case = self.predict_case(torch.as_tensor(data))
                logits = export_logits(case.probabilities, self.regions).numpy()
                if ofile is None:
                    returned.append(jobs.submit(convert_predicted_logits_to_segmentation_with_correct_shape,
                                                (logits, self.plans_manager, self.configuration_manager,
                                                 self.label_manager, properties, save_probabilities)))
                else:
                    returned.append(self._submit_exports(jobs, case, logits, properties, ofile, save_probabilities,
                                                         uncertainty_folders))
            jobs.wait_for_all()
            results = [jobs.result(job) for job in returned]
            for folder in sorted(uncertainty_folders):  # once every case's row is written
                write_uncertainty_table(folder)
        if isinstance(data_iterator, MultiThreadedAugmenter):
            data_iterator._finish()
        compute_gaussian.cache_clear()
        empty_cache(self.device)
        return results

    def _submit_exports(self, jobs: ExportJobs, case: CasePrediction, logits: np.ndarray, properties: dict,
                        ofile: str, save_probabilities: bool, uncertainty_folders: set):
        """Queues the files of one case as one job, returned: the uncertainty maps and scores with K > 1 samples
        (adding their folder to ``uncertainty_folders``), the per-step segmentations with ``save_steps``, each
        sample's segmentation (and probabilities) with ``save_samples``, and last the segmentation, so that a case
        whose segmentation exists, what ``--continue_prediction`` skips, has all its files."""
        folder, name = os.path.dirname(os.path.abspath(ofile)), os.path.basename(ofile)
        jobs.add_folder(folder)
        common = (properties, self.configuration_manager, self.plans_manager, self.dataset_json)
        calls = []
        if self.num_samples > 1:
            os.makedirs(join(folder, UNCERTAINTY_FOLDER), exist_ok=True)
            jobs.add_folder(join(folder, UNCERTAINTY_FOLDER))
            calls.append((export_uncertainty_maps, (logits, case.mutual_information.numpy(), *common,
                                                    join(folder, UNCERTAINTY_FOLDER, name))))
            uncertainty_folders.add(join(folder, UNCERTAINTY_FOLDER))
        if case.step_probabilities is not None:
            os.makedirs(join(folder, STEPS_FOLDER), exist_ok=True)
            jobs.add_folder(join(folder, STEPS_FOLDER))
            calls += [(export_prediction_atomically, (export_logits(step, self.regions).numpy(), *common,
                                                      join(folder, STEPS_FOLDER, f"{name}_step{k}"), False))
                      for k, step in enumerate(case.step_probabilities, start=1)]
        if case.sample_probabilities is not None:
            os.makedirs(join(folder, SAMPLES_FOLDER), exist_ok=True)
            jobs.add_folder(join(folder, SAMPLES_FOLDER))
            calls += [(export_prediction_atomically, (export_logits(sample, self.regions).numpy(), *common,
                                                      join(folder, SAMPLES_FOLDER, f"{name}_sample{k}"),
                                                      save_probabilities))
                      for k, sample in enumerate(case.sample_probabilities, start=1)]
        calls.append((export_prediction_atomically, (logits, *common, ofile, save_probabilities)))
        return jobs.submit(run_in_order, (calls,))
