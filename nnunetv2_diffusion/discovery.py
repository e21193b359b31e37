"""How stock nnU-Net commands find our trainer classes.

nnU-Net (>= 2.8) looks a trainer up by class name, first inside nnunetv2, then in each folder listed in the
``nnUNet_extTrainer`` environment variable, importing that folder's files under bare module names. Our folder
``trainers/`` (installed as ``nnunetv2_diffusion.ext_trainers``) holds only files that re-export the real classes
from this package, so the classes nnU-Net finds keep their importable module path (``nnunetv2_diffusion.training``),
which the spawn workers of nnU-Net's data loading and export need.

The installed ``nnunetv2_diffusion_ext_trainer.pth`` calls :func:`register_ext_trainer_path` when Python starts, so
``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_find_best_configuration`` ... work with nothing set by hand.
Without it (e.g. a site that disables .pth files), ``export nnUNet_extTrainer=$(nnUNetv2_diffusion_ext_path)``.

This module runs at every interpreter start: it must stay cheap (no torch, no nnunetv2 import).
"""

import importlib.util
import os

ENV_VAR = "nnUNet_extTrainer"


def ext_trainer_path() -> str:
    """Absolute path of the shim folder to list in ``nnUNet_extTrainer``."""
    spec = importlib.util.find_spec("nnunetv2_diffusion.ext_trainers")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def register_ext_trainer_path() -> None:
    """Appends our shim folder to ``nnUNet_extTrainer`` unless it is already listed (idempotent: some Python set-ups
    process .pth files twice). Folders the user listed keep their place in front."""
    try:
        path = ext_trainer_path()
    except (ImportError, AttributeError, TypeError, IndexError):
        return  # half-uninstalled package: never break interpreter start-up
    listed = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if path not in listed:
        os.environ[ENV_VAR] = os.pathsep.join(listed + [path])


def print_ext_trainer_path() -> None:
    """Console script ``nnUNetv2_diffusion_ext_path``: prints the folder for a manual ``nnUNet_extTrainer``."""
    print(ext_trainer_path())
