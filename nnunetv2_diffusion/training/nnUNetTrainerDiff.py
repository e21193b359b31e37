"""Standard diffusion segmentation training inside nnU-Net's pipeline (docs/design.md, "Training strategies")."""

import os
from dataclasses import replace
from typing import NamedTuple

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import autocast

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0, regions_to_x0, x0_from_logits
from nnunetv2_diffusion.diffusion.schedules import timestep_to_tau
from nnunetv2_diffusion.diffusion.timestep_samplers import TIMESTEP_SAMPLERS, make_timestep_sampler
from nnunetv2_diffusion.networks.build import build_diffusion_network
from nnunetv2_diffusion.networks.wrappers import highest_resolution, unwrap_network
from nnunetv2_diffusion.training.batch_checks import check_training_batch
from nnunetv2_diffusion.training.checkpointing import SafeCheckpointMixin
from nnunetv2_diffusion.training.dice_focal_loss import DiceFocalLoss
from nnunetv2_diffusion.training.distributed import gather_from_all_ranks, rank_local_dice
from nnunetv2_diffusion.training.loss_guard import FiniteLossMixin
from nnunetv2_diffusion.training.warm_start import install_for

SEGMENTATION_LOSSES = ("dice_ce", "dice_focal")
SELF_CONDITIONING_STRATEGIES = ("self_conditioning", "self_conditioning_next")


class DiffusionStepOutput(NamedTuple):
    """What a training strategy hands to the shared loss.

    output: the pass with gradient: logits (B, C, *patch), or the deep-supervision list of logits.
    t: long (B,), that pass's timesteps. weights: float32 (B,), their loss weights (all 1 unless importance sampling).
    """

    output: torch.Tensor | list
    t: torch.Tensor
    weights: torch.Tensor


class nnUNetTrainerDiff(FiniteLossMixin, SafeCheckpointMixin, nnUNetTrainer):
    """Diffusion segmenter with nnU-Net's plans, data, augmentation, optimiser, schedule, loss and checkpoints.

    Only the network (time-conditioned, mask channels in the input) and the training step change, plus two
    safety nets nnU-Net lacks: atomic, weights-only checkpoints and a stop at the first non-finite loss. This class is
    standard diffusion training: t ~ U{0..T-1}, x_t from the ground truth, one forward, loss against the ground
    truth. Strategies are subclasses that override :meth:`diffusion_forward`.

    The diffusion settings are class attributes, not ``__init__`` attributes, because nnU-Net's predictor builds the
    network from the class without instantiating the trainer; variants override them in the class body.
    """

    num_diffusion_timesteps = 5  # T: training timesteps of the noise schedule (paper: 5)
    noise_schedule = "linear"  # 'linear' (1001-step linear betas, T kept steps) or 'cosine'
    default_sampler = "ddpm"  # what inference uses unless told otherwise (paper: DDPM, 5 steps)
    default_sampling_steps = 5
    default_eta = 0.0  # DDIM only
    self_conditioning = False  # C extra input channels for the previous estimate (self-conditioning strategies only)
    diffusion_strategy = "standard"  # recorded in the checkpoint; every strategy subclass names its own
    timestep_sampling = "uniform"  # 'uniform' or 'importance' (loss-aware p(t), unbiased weight 1 / (p(t) T))
    segmentation_loss = "dice_ce"  # 'dice_ce' (nnU-Net's Dice + CE) or 'dice_focal' (the paper's Dice + 20 x focal)
    conditioning = "stage"  # where the timestep enters the U-Net: 'stage' or 'block' (networks/diffusion_unet.py)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        # check before nnU-Net creates folders and logs: a bad combination must stop at once
        self.diffusion_config()
        plans_manager = PlansManager(plans)
        self._check_supported_labels(plans_manager.get_label_manager(dataset_json))
        self._check_distributed(plans_manager.get_configuration(configuration), configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.diffusion = GaussianDiffusion.from_schedule(self.noise_schedule, self.num_diffusion_timesteps)
        self.timestep_sampler = make_timestep_sampler(self.timestep_sampling, num_timesteps=self.num_loss_timesteps)
        if self.is_ddp:
            # every process's CUDA generator starts from the same fixed seed, so without an offset every rank would
            # draw the same timesteps and noise; initial seed + rank keeps a seeded run reproducible
            torch.manual_seed((torch.initial_seed() + self.local_rank) % 2**64)
        install_for(self)  # nnUNetv2_train -pretrained_weights <stock checkpoint> warm-starts (training/warm_start.py)

    @classmethod
    def diffusion_config(cls) -> DiffusionConfig:
        """The validated diffusion settings of this trainer class (raises ValueError on a bad combination)."""
        try:
            config = DiffusionConfig(num_timesteps=cls.num_diffusion_timesteps, schedule=cls.noise_schedule,
                                     sampler=cls.default_sampler, sampling_steps=cls.default_sampling_steps,
                                     eta=cls.default_eta, self_conditioning=cls.self_conditioning,
                                     strategy=cls.diffusion_strategy, conditioning=cls.conditioning)
            cls._check_training_options(config)
        except ValueError as e:
            raise ValueError(f"{cls.__name__}: invalid diffusion settings: {e}") from None
        return config

    @classmethod
    def _check_training_options(cls, config: DiffusionConfig) -> None:
        uses_estimate = config.strategy in SELF_CONDITIONING_STRATEGIES
        if config.self_conditioning and not uses_estimate:
            raise ValueError(f"self-conditioning is not supported with the {config.strategy!r} strategy (only "
                             f"{' and '.join(map(repr, SELF_CONDITIONING_STRATEGIES))} fill the estimate channels)")
        if uses_estimate and not config.self_conditioning:
            raise ValueError(f"the {config.strategy!r} strategy needs self_conditioning = True "
                             f"(C extra input channels)")
        if cls.timestep_sampling not in TIMESTEP_SAMPLERS:
            raise ValueError(f"unknown timestep sampler {cls.timestep_sampling!r}; valid: "
                             f"{', '.join(TIMESTEP_SAMPLERS)}")
        if cls.segmentation_loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"unknown segmentation loss {cls.segmentation_loss!r}; valid: "
                             f"{', '.join(SEGMENTATION_LOSSES)}")

    @classmethod
    def _check_supported_labels(cls, label_manager) -> None:
        if label_manager.has_regions and label_manager.has_ignore_label:
            raise ValueError(f"{cls.__name__} does not support region-based labels together with an 'ignore' label "
                             f"(dataset.json); use one of the two, or the stock nnUNetTrainer.")
        if cls.segmentation_loss == "dice_focal" and (label_manager.has_regions or label_manager.has_ignore_label):
            raise ValueError(f"{cls.__name__}: the 'dice_focal' loss is written for exclusive labels without an "
                             f"ignore label; dataset.json defines {'regions' if label_manager.has_regions else 'one'}"
                             f". Use the 'dice_ce' variant (nnU-Net's loss handles both).")

    @classmethod
    def _check_distributed(cls, configuration_manager, configuration: str) -> None:
        """Under DDP every rank needs at least one sample (nnU-Net would stop each rank with an assertion), and
        BatchNorm plans cannot be trained with 'block' conditioning or self-conditioning: nnU-Net converts BatchNorm
        to SyncBatchNorm, which drops the FiLM hooks 'block' puts on the norms, and the self-conditioning pass runs on
        some ranks only, where SyncBatchNorm's collectives would leave the ranks waiting for each other."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world_size, batch_size = torch.distributed.get_world_size(), configuration_manager.batch_size
        if batch_size < world_size:
            raise ValueError(f"{cls.__name__}: -num_gpus {world_size} needs a batch of at least {world_size}, "
                             f"but configuration {configuration} has batch_size {batch_size} in the plans; use "
                             f"fewer GPUs or a configuration with a larger batch (plans 'inherits_from')")
        norm = str(configuration_manager.network_arch_init_kwargs.get("norm_op", ""))
        if "BatchNorm" in norm and (cls.conditioning == "block" or cls.self_conditioning):
            raise ValueError(f"{cls.__name__}: configuration {configuration} normalises with {norm}, which nnU-Net "
                             f"turns into SyncBatchNorm under -num_gpus {world_size}; 'block' conditioning and "
                             f"self-conditioning do not work with it. Train on one GPU, or with InstanceNorm plans")

    def initialize(self):
        super().initialize()
        self.record_label_space(unwrap_network(self.network))

    def on_train_start(self):
        self.check_previous_stage_predictions()
        super().on_train_start()

    def check_previous_stage_predictions(self) -> None:
        """A cascade stage trains on the previous stage's predictions of every case of its split, which that
        stage's final validation writes (all folds of it together cover every case). Missing ones stop training
        here, naming the folder and a case, rather than in a data-loading worker."""
        if not self.is_cascaded:
            return
        folder = self.folder_with_segs_from_previous_stage
        # identifiers may hold dots (e.g. DICOM UIDs): strip only the endings nnU-Net's datasets read
        endings = (".b2nd", ".npz", ".npy")
        present = {name[:-len(e)] for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                   for e in endings if name.endswith(e)}
        training, validation = self.do_split()
        missing = sorted((set(training) | set(validation)) - present)
        if missing:
            previous = self.configuration_manager.previous_stage_name
            raise FileNotFoundError(
                f"{self.configuration_name} is a cascade stage, but {folder} lacks the {previous} predictions of "
                f"{len(missing)} case(s), e.g. {os.path.join(folder, missing[0])}: train (or --val) every fold of "
                f"{previous} with {self.__class__.__name__} first; their final validation writes them")

    def record_label_space(self, network) -> None:
        """Stores in the network's diffusion settings whether its mask channels are regions, so the checkpoint
        tells inference (stock nnUNetv2_predict included) to use sigmoids rather than a softmax."""
        network.config = replace(network.config, regions=self.label_manager.has_regions)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """The planned U-Net with image + C (+ C) input channels and timestep conditioning. A classmethod so the
        predictor, which only calls this on the class, gets this class's diffusion settings."""
        return build_diffusion_network(configuration_manager, num_input_channels, num_output_channels,
                                       cls.diffusion_config(), enable_deep_supervision)

    def _build_loss(self):
        """nnU-Net's loss with nnU-Net's deep-supervision weights; the 'dice_focal' variant swaps only the loss
        applied to each output."""
        loss = super()._build_loss()
        if self.segmentation_loss == "dice_ce":
            return loss
        paper_loss = DiceFocalLoss()
        if isinstance(loss, DeepSupervisionWrapper):
            return DeepSupervisionWrapper(paper_loss, loss.weight_factors)
        return paper_loss

    # ------------------------------------------------------------------ training step
    @property
    def num_loss_timesteps(self) -> int:
        """The pass with gradient is trained on t in [0, num_loss_timesteps - 1]: T here, T - 1 when recycling."""
        return self.num_diffusion_timesteps

    def sample_timesteps(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B,) long in [0, num_loss_timesteps - 1] from the timestep sampler, and the loss weights (B,) float32
        (all 1 for uniform sampling), both on the training device."""
        return self.timestep_sampler.sample(batch_size, self.device)

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """Timestep t (B,) in [0, T-1] -> network time tau (B,) in (0, 1] (:func:`timestep_to_tau`)."""
        return timestep_to_tau(t, self.num_diffusion_timesteps)

    def ground_truth_x0(self, target) -> torch.Tensor:
        """Full-resolution target -> x0 (B, C, *spatial) in {-1, 1}: from label ids (B, 1, *spatial), 0 at voxels of
        the ignore label (no information: the loss leaves them out, and no noisy mask may pretend to know them), or
        from nnU-Net's region target (B, R, *spatial) in {0, 1}."""
        labels = highest_resolution(target)
        if self.label_manager.has_regions:
            return regions_to_x0(labels)
        return labels_to_x0(labels, self.label_manager.num_segmentation_heads, self.label_manager.ignore_label)

    @torch.no_grad()
    def predict_x0_without_grad(self, data: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """First pass of the two-pass strategies: x0_hat = 2 softmax(net(I, x_t, t)) - 1 (2 sigmoid - 1 for regions)
        of the full-resolution output, (B, C, *patch) in [-1, 1], kept soft, no gradient (estimate channels, if any,
        zero)."""
        output = self.network(data, x_t, self.tau(t))
        return x0_from_logits(highest_resolution(output), self.label_manager.has_regions)

    def diffusion_forward(self, data: torch.Tensor, target) -> DiffusionStepOutput:
        """Standard diffusion: t ~ U{0..T-1}, x_t = q_sample(x0_gt, t, eps), one forward with gradient.

        data: (B, image channels, *patch) normalised image; target: label map(s) as nnU-Net's loader gives them.
        Returns the network output (logits, or the deep-supervision list) with its timesteps and loss weights, for
        the shared loss against the target.
        """
        x0 = self.ground_truth_x0(target)
        t, weights = self.sample_timesteps(x0.shape[0])
        x_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        return DiffusionStepOutput(self.network(data, x_t, self.tau(t)), t, weights)

    def diffusion_loss(self, step: DiffusionStepOutput, target) -> torch.Tensor:
        """The one loss every strategy shares: ``self.loss`` between the pass with gradient and the ground truth.

        Uniform timesteps: exactly the stock batch loss. Importance sampling: the same loss per sample, fed back to
        the sampler and weighted by 1 / (p(t) T), so its expectation is the uniform-sampling loss (docs/design.md;
        the reference code's p(t) T weight would bias it).
        """
        if self.timestep_sampling == "uniform":
            return self.loss(step.output, target)
        losses = self.per_sample_loss(step.output, target)
        # under DDP every rank's sampler must learn from the whole world's batch, or the ranks' p(t) drift apart
        self.timestep_sampler.update(*gather_from_all_ranks(step.t, losses.detach()))
        return (step.weights * losses).mean()

    def per_sample_loss(self, output, target) -> torch.Tensor:
        """``self.loss`` of each sample alone (batch Dice becomes that sample's Dice), float32 (B,)."""
        def sample(x, i):
            return [level[i:i + 1] for level in x] if isinstance(x, (list, tuple)) else x[i:i + 1]

        batch_size = highest_resolution(target).shape[0]
        # under DDP nnU-Net's batch Dice would add the same-index sample of every other rank to each sample's Dice
        # (one all-gather per sample, whose count no longer matches between ranks when their batch sizes differ)
        with rank_local_dice(self.loss):
            return torch.stack([self.loss(sample(output, i), sample(target, i)).float() for i in range(batch_size)])

    def _autocast(self):
        # autocast only on CUDA, like the stock trainer (slow on CPU, unsupported on MPS)
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _batch_to_device(self, batch: dict):
        """The batch's image and target(s) on the training device, after :func:`check_training_batch`."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        check_training_batch(data, highest_resolution(target), self.num_target_values, batch.get("keys"),
                             self.preprocessed_dataset_folder)
        if isinstance(target, list):
            return data, [t.to(self.device, non_blocking=True) for t in target]
        return data, target.to(self.device, non_blocking=True)

    @property
    def num_target_values(self) -> int:
        """Valid target values are 0 .. this - 1: the class ids (and the ignore label, the highest id), or 0 and 1
        in each channel of a region target."""
        if self.label_manager.has_regions:
            return 2
        return self.label_manager.num_segmentation_heads + self.label_manager.has_ignore_label

    def train_step(self, batch: dict) -> dict:
        data, target = self._batch_to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.diffusion_loss(self.diffusion_forward(data, target), target)
        if not self.ensure_finite_loss(loss):  # before backward: NaN never reaches the weights
            return {"loss": loss.detach().cpu().numpy()}  # a skipped fp16 step, as stock nnU-Net's GradScaler does
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_state(self) -> dict:
        """The importance sampler's loss statistics, so a resumed run keeps its p(t)."""
        if self.timestep_sampling == "uniform":
            return {}
        return {"timestep_sampler_state": self.timestep_sampler.state_dict()}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        # absent when uniform, or when resuming a run that sampled uniformly
        if self.timestep_sampling != "uniform" and "timestep_sampler_state" in checkpoint:
            self.timestep_sampler.load_state_dict(checkpoint["timestep_sampler_state"])

    # ------------------------------------------------------------------ per-epoch pseudo validation
    def validation_step(self, batch: dict) -> dict:
        """Pseudo-Dice of a one-step prediction from pure noise at t = T-1 (the hardest input; cheap), counted as the
        stock trainer counts it (argmax, or regions above 0.5; ignore-label voxels left out).
        The true Dice comes from the final validation, which runs the full sampler."""
        data, target = self._batch_to_device(batch)
        labels = highest_resolution(target)
        num_classes = self.label_manager.num_segmentation_heads
        noise = torch.randn((data.shape[0], num_classes, *data.shape[2:]), device=self.device)
        t_last = torch.full((data.shape[0],), self.num_diffusion_timesteps - 1, device=self.device)
        with self._autocast():
            output = self.network(data, noise, self.tau(t_last))
            loss = self.loss(output, target)
        logits = highest_resolution(output)
        if self.label_manager.has_regions:
            prediction = (torch.sigmoid(logits) > 0.5).long()
        else:
            prediction = torch.zeros_like(logits, dtype=torch.float16).scatter_(1, logits.argmax(1, keepdim=True), 1)
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (labels != self.label_manager.ignore_label).float()
            labels = labels.masked_fill(labels == self.label_manager.ignore_label, 0)
        tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, labels, axes=[0, *range(2, logits.ndim)], mask=mask)
        tp, fp, fn = (x.detach().cpu().numpy() for x in (tp, fp, fn))
        if not self.label_manager.has_regions:  # drop the background class, as the stock trainer does
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation with the global-step diffusion predictor in place of the stock one, so
        validation/summary.json holds the Dice of real samples (see training/diffusion_validation.py)."""
        from nnunetv2_diffusion.training.diffusion_validation import diffusion_predictor_in_validation

        with diffusion_predictor_in_validation(self):
            super().perform_actual_validation(save_probabilities)



