"""Checks of the predictor's options and input images, made before anything is predicted or written."""

import contextlib
import io
import json
import os
import re

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, subfiles

from nnunetv2_diffusion.diffusion.samplers import check_sampling_options
from nnunetv2_diffusion.file_integrity import NIFTI_ENDINGS, nifti_file_problem
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError


def check_predictor_options(sampler, steps, eta, num_samples, ensemble_weight) -> None:
    """The checks that need no model (sampler, steps and eta against the model follow once it is loaded)."""
    try:
        check_sampling_options(sampler, steps, eta)
    except ValueError as e:
        raise DiffusionPredictorError(str(e)) from None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise DiffusionPredictorError(f"num_samples must be an integer >= 1 (got {num_samples!r})")
    if ensemble_weight is not None and not 0.0 <= ensemble_weight <= 1.0:
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




def check_previous_stage_files(cases: list[list[str]], folder: str | None, file_ending: str,
                               previous_stage: str) -> None:
    """A cascade stage needs, for every case, the previous stage's segmentation ``<folder>/<case><ending>``
    (nnU-Net's ``-prev_stage_predictions``); refuses a missing folder or file, naming it."""
    if folder is None:
        raise DiffusionPredictorError(f"the model is a cascade stage: it needs the segmentations "
                                      f"of {previous_stage} (predict {previous_stage} first and pass its output "
                                      f"folder with -prev_stage_predictions)")
    for files in cases:
        case = os.path.basename(files[0])[: -(len(file_ending) + 5)]  # <case>_XXXX<ending>
        path = os.path.join(folder, case + file_ending)
        if not isfile(path):
            raise DiffusionPredictorError(f"previous-stage segmentation {path} of case {case} does not exist: "
                                          f"predict {previous_stage} for it first (-prev_stage_predictions)")
