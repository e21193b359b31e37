"""Standard diffusion segmentation training inside nnU-Net's pipeline (DESIGN §1, 'Standard')."""


import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import autocast

from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.diffusion.gaussian_diffusion import GaussianDiffusion
from nnunetv2_diffusion.diffusion.mask_encoding import labels_to_x0
from nnunetv2_diffusion.networks.build import build_diffusion_network


class nnUNetTrainerDiff(nnUNetTrainer):
    """Diffusion segmenter with nnU-Net's plans, data, augmentation, optimiser, schedule, loss and checkpoints.

    Only the network (time-conditioned, mask channels in the input) and the training step change. This class is
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
    self_conditioning = False  # C extra input channels for the previous estimate

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # check before nnU-Net creates folders and logs: a bad combination must stop at once
        self.diffusion_config()
        self._check_supported_labels(PlansManager(plans).get_label_manager(dataset_json))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.diffusion = GaussianDiffusion.from_schedule(self.noise_schedule, self.num_diffusion_timesteps)

    @classmethod
    def diffusion_config(cls) -> DiffusionConfig:
        """The validated diffusion settings of this trainer class (raises ValueError on a bad combination)."""
        try:
            return DiffusionConfig(num_timesteps=cls.num_diffusion_timesteps, schedule=cls.noise_schedule,
                                   sampler=cls.default_sampler, sampling_steps=cls.default_sampling_steps,
                                   eta=cls.default_eta, self_conditioning=cls.self_conditioning)
        except ValueError as e:
            raise ValueError(f"{cls.__name__}: invalid diffusion settings: {e}") from None

    @classmethod
    def _check_supported_labels(cls, label_manager) -> None:
        if label_manager.has_regions:
            raise ValueError(f"{cls.__name__} does not support region-based labels yet (dataset.json defines "
                             f"'regions_class_order'); train with exclusive labels or use the stock nnUNetTrainer.")
        if label_manager.has_ignore_label:
            raise ValueError(f"{cls.__name__} does not support an 'ignore' label yet (dataset.json labels); remove it "
                             f"or use the stock nnUNetTrainer.")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """The planned U-Net with image + C (+ C) input channels and timestep conditioning. A classmethod so the
        predictor, which only calls this on the class, gets this class's diffusion settings."""
        return build_diffusion_network(configuration_manager, num_input_channels, num_output_channels,
                                       cls.diffusion_config(), enable_deep_supervision)

    # ------------------------------------------------------------------ training step
    def sample_timesteps(self, batch_size: int, num_timesteps: int) -> torch.Tensor:
        """t ~ U{0..num_timesteps-1}, (B,) long on the training device."""
        return torch.randint(0, num_timesteps, (batch_size,), device=self.device)

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """Timestep t (B,) in [0, T-1] -> network time tau = (t + 1) / T in (0, 1]."""
        return (t.float() + 1) / self.num_diffusion_timesteps

    def ground_truth_x0(self, target) -> torch.Tensor:
        """Full-resolution target (B, 1, *spatial) label ids -> x0 (B, C, *spatial) in {-1, 1}."""
        labels = target[0] if isinstance(target, list) else target
        return labels_to_x0(labels, self.label_manager.num_segmentation_heads)

    def diffusion_forward(self, data: torch.Tensor, target):
        """Standard diffusion: t ~ U{0..T-1}, x_t = q_sample(x0_gt, t, eps), one forward with gradient.

        data: (B, image channels, *patch) normalised image; target: label map(s) as nnU-Net's loader gives them.
        Returns the network output (logits, or the deep-supervision list) for the shared loss against the target.
        """
        x0 = self.ground_truth_x0(target)
        t = self.sample_timesteps(x0.shape[0], self.num_diffusion_timesteps)
        x_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        return self.network(data, x_t, self.tau(t))

    def _autocast(self):
        # autocast only on CUDA, like the stock trainer (slow on CPU, unsupported on MPS)
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _batch_to_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            return data, [t.to(self.device, non_blocking=True) for t in target]
        return data, target.to(self.device, non_blocking=True)

    def train_step(self, batch: dict) -> dict:
        data, target = self._batch_to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss(self.diffusion_forward(data, target), target)
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

    # ------------------------------------------------------------------ per-epoch pseudo validation
    def validation_step(self, batch: dict) -> dict:
        """Pseudo-Dice of a one-step prediction from pure noise at t = T-1 (the hardest input; cheap).
        The true Dice comes from the final validation, which runs the full sampler."""
        data, target = self._batch_to_device(batch)
        labels = target[0] if isinstance(target, list) else target
        num_classes = self.label_manager.num_segmentation_heads
        noise = torch.randn((data.shape[0], num_classes, *data.shape[2:]), device=self.device)
        t_last = torch.full((data.shape[0],), self.num_diffusion_timesteps - 1, device=self.device)
        with self._autocast():
            output = self.network(data, noise, self.tau(t_last))
            loss = self.loss(output, target)
        logits = output[0] if isinstance(output, list) else output
        prediction = torch.zeros_like(logits, dtype=torch.float16).scatter_(1, logits.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, labels, axes=[0, *range(2, logits.ndim)])
        # drop the background class, as the stock trainer does
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.detach().cpu().numpy()[1:],
                "fp_hard": fp.detach().cpu().numpy()[1:], "fn_hard": fn.detach().cpu().numpy()[1:]}



