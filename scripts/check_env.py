"""Fails early, naming the versions, where an environment cannot run nnunetv2-diffusion: torch and torchvision must
import together (a mismatched pair breaks nnU-Net's trainer lookup deep inside timm), and stock nnU-Net must find our
trainers. Used by scripts/setup_env.sh here and benchmarks/device_env.sh on the lent GPU machine.

    python scripts/check_env.py [PREFIX]      # one line: PREFIX torch ..., torchvision ...; stock nnU-Net finds ...
"""

import contextlib
import io
import sys

import torch  # first: a broken torch / torchvision pair fails here, not deep inside nnU-Net
import torchvision
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints the folders it searches
    trainer = recursive_find_trainer_class_by_name("nnUNetTrainerDiffRecycle")
prefix = sys.argv[1] + " " if len(sys.argv) > 1 else ""
print(f"{prefix}torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), "
      f"torchvision {torchvision.__version__}; stock nnU-Net finds {trainer.__name__}")
