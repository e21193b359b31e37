"""``nnUNetv2_predict_diffusion``: ``nnUNetv2_predict`` with the global-step diffusion predictor.

Every stock flag comes from nnU-Net's own parser (see :func:`stock_predict_parser`), so the two commands cannot drift
apart; the diffusion flags are added on top. Bad input (an unknown trainer or configuration, a missing or
non-diffusion model, an incompatible ``--ensemble_with`` model, out-of-range options, a missing or empty input folder,
unreadable or NaN images) stops the command with a one-line message and exit status 1 before anything is written to
the output folder.
"""

import argparse
import contextlib
import io
import multiprocessing
import os
import sys

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join
from nnunetv2.inference.predict_from_raw_data import predict_entry_point
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunetv2_diffusion.diffusion.samplers import SAMPLERS
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.input_checks import read_json_file
from nnunetv2_diffusion.inference.predictor import DEFAULT_SAMPLE_BATCH, DEFAULT_SEED, nnUNetDiffusionPredictor

DEFAULT_TRAINER = "nnUNetTrainerDiffRecycle"
PROGRAM = "nnUNetv2_predict_diffusion"

CITATION = (
    "\n#######################################################################\n"
    "Please cite the following papers when using this:\n"
    "Fu, Y., Li, Y., Saeed, S. U., Clarkson, M. J., & Hu, Y. (2023). A Recycling Training Strategy for Medical Image "
    "Segmentation with Diffusion Denoising Models. MELBA.\n"
    "Isensee, F., Jaeger, P. F., Kohl, S. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: a self-configuring "
    "method for deep learning-based biomedical image segmentation. Nature methods, 18(2), 203-211.\n"
    "#######################################################################\n"
)


class _ParserBuilt(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def stock_predict_parser() -> argparse.ArgumentParser:
    """The argument parser of the installed ``nnUNetv2_predict``.

    nnU-Net builds it inside ``predict_entry_point`` and parses straight away, with no function that returns it. We
    run that function with ``ArgumentParser.parse_args`` replaced by one that hands back the finished parser (and
    its citation banner silenced), then restore ``parse_args``. Nothing else of the stock function runs.
    """
    original = argparse.ArgumentParser.parse_args

    def hand_back(parser, *args, **kwargs):
        raise _ParserBuilt(parser)

    argparse.ArgumentParser.parse_args = hand_back
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            predict_entry_point()
    except _ParserBuilt as built:
        return built.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError("nnUNetv2_predict did not build an argument parser")


def build_parser() -> argparse.ArgumentParser:
    """Stock ``nnUNetv2_predict`` flags (``-tr`` defaults to a diffusion trainer) plus the diffusion flags."""
    parser = stock_predict_parser()
    parser.prog = PROGRAM
    parser.description = ("Predict with a diffusion segmentation model trained by an nnUNetTrainerDiff trainer: every "
                          "denoising step runs nnU-Net's sliding window over the whole case. Takes every "
                          "nnUNetv2_predict flag; sampler settings default to those stored in the checkpoint.")
    parser.set_defaults(tr=DEFAULT_TRAINER)
    for action in parser._actions:
        if action.dest == "tr":
            action.help = f"Diffusion trainer class the model was trained with. Default: {DEFAULT_TRAINER}"
    group = parser.add_argument_group("diffusion sampling")
    group.add_argument("--sampler", choices=SAMPLERS, default=None,
                       help="Reverse-process sampler. Default: the one stored with the model (paper: ddpm).")
    group.add_argument("--steps", type=int, default=None,
                       help="Denoising steps in [1, T] (T: the model's training timesteps). Default: as stored.")
    group.add_argument("--eta", type=float, default=None,
                       help="DDIM noise scale in [0, 1], ddim only (0: deterministic). Default: stored with the model.")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED,
                       help=f"Seed of the sampling noise; each case's noise also depends on its content, so results "
                            f"do not depend on case order. Default: {DEFAULT_SEED}")
    group.add_argument("--num_samples", type=int, default=1,
                       help="Average K independent samples per case; with K > 1 also writes per-voxel maps of the "
                            "entropy and of the mutual information (the samples' disagreement) to "
                            "<output>/uncertainty/<case>_entropy<ending> and <case>_mutual_information<ending> (.npz, "
                            "key 'map', for PNG/BMP/TIFF datasets), and "
                            "case-level scores and volumes to <output>/uncertainty/uncertainty_per_case.csv. With "
                            "DDIM at eta 0 samples differ only through their starting noise x_T. Default: 1")
    group.add_argument("--sample_batch", type=int, default=DEFAULT_SAMPLE_BATCH,
                       help="Run this many of the --num_samples samples together, their tiles batched into one "
                            "network call (more memory; the result is the same up to floating-point rounding). "
                            "Default: all of them")
    group.add_argument("--save_steps", action="store_true",
                       help="Also write the segmentation after every denoising step to "
                            "<output>/steps/<case>_step<k><ending>.")
    group.add_argument("--save_samples", action="store_true",
                       help="Also write each of the --num_samples samples' own segmentation (and probabilities with "
                            "--save_probabilities) to <output>/samples/<case>_sample<k><ending>. Sample k does not "
                            "depend on K, so the first k samples are what --num_samples k would average.")
    group.add_argument("--ensemble_with", type=str, default=None, metavar="MODEL_FOLDER",
                       help="A stock nnU-Net model folder (same dataset, labels and preprocessing) whose softmax is "
                            "averaged with the diffusion probabilities before export; uses the same -f and -chk.")
    group.add_argument("--ensemble_weight", type=float, default=None,
                       help="w in (1 - w) * p_diffusion + w * p_stock. Default: the weight chosen on validation "
                            "cases by nnUNetv2_diffusion_choose_ensemble for this stock model, else 0.5")
    return parser


def _device(name: str) -> torch.device:
    """Like nnUNetv2_predict: all cores on the CPU, one thread next to a GPU."""
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():  # else the first case fails deep in torch, after JSON files are written
            raise DiffusionPredictorError("-device cuda (the default), but torch finds no CUDA GPU: use -device cpu")
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda")
    if name == "mps":
        return torch.device("mps")
    raise DiffusionPredictorError(f"-device must be cpu, cuda or mps (got {name})")


def _trainer_exists(name: str) -> bool:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        return False
    return True


def check_requested_model(model_folder: str, trainer: str, plans: str, configuration: str) -> None:
    """The model folder ``-tr/-p/-c`` point to exists and its plans hold ``-c``; otherwise says which of the three
    is wrong and lists the models trained for the dataset."""
    plans_file = join(model_folder, "plans.json")
    if isdir(model_folder):
        if isfile(plans_file):
            configurations = read_json_file(plans_file).get("configurations", {})
            if configuration not in configurations:
                raise DiffusionPredictorError(f"plans file {plans_file} has no configuration {configuration} (-c); "
                                              f"it has: {', '.join(configurations)}")
        return
    reasons = [] if _trainer_exists(trainer) else [f"no trainer class named {trainer} (-tr) is installed"]
    dataset_folder = os.path.dirname(model_folder)
    trained = sorted(d for d in os.listdir(dataset_folder) if d.count("__") == 2
                     and isdir(join(dataset_folder, d))) if isdir(dataset_folder) else []
    for other in trained:
        if other.split("__")[1] == plans and isfile(join(dataset_folder, other, "plans.json")):
            configurations = read_json_file(join(dataset_folder, other, "plans.json")).get("configurations", {})
            if configuration not in configurations:
                reasons.append(f"the {plans} plans have no configuration {configuration} (-c); they have: "
                               f"{', '.join(configurations)}")
                break
    reasons.append(f"models trained for this dataset: {', '.join(trained)}" if trained
                   else f"{dataset_folder} holds no trained model")
    raise DiffusionPredictorError(f"no model for -tr {trainer} -p {plans} -c {configuration}: {model_folder} does not "
                                  f"exist; {'; '.join(reasons)}")


def run(args: argparse.Namespace) -> None:
    """Checks everything, loads the model(s), then predicts (what the command does after parsing). Nothing is
    written before every check has passed; the predictor checks the input cases before it writes."""
    folds = [f if f == "all" else int(f) for f in args.f]
    if not isdir(args.i):
        raise DiffusionPredictorError(f"input folder {args.i} does not exist")
    if not 0 <= args.part_id < args.num_parts:
        raise DiffusionPredictorError(f"-part_id must be in [0, -num_parts) (got {args.part_id} of {args.num_parts})")
    try:
        model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    except (RuntimeError, ValueError) as e:
        raise DiffusionPredictorError(" ".join(str(e).split())) from None
    check_requested_model(model_folder, args.tr, args.p, args.c)
    predictor = nnUNetDiffusionPredictor(
        tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
        perform_everything_on_device=not args.not_on_device, device=_device(args.device), verbose=args.verbose,
        verbose_preprocessing=args.verbose, allow_tqdm=not args.disable_progress_bar, sampler=args.sampler,
        steps=args.steps, eta=args.eta, seed=args.seed, num_samples=args.num_samples, save_steps=args.save_steps,
        ensemble_weight=args.ensemble_weight, sample_batch=args.sample_batch, save_samples=args.save_samples)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
    if args.ensemble_with is not None:
        predictor.initialize_ensemble_model(args.ensemble_with, folds, checkpoint_name=args.chk)
    # -npp 0 -nps 0 run in this process; unlike nnU-Net's sequential path, this one keeps -num_parts / -part_id
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                 num_processes_segmentation_export=args.nps,
                                 folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                 num_parts=args.num_parts, part_id=args.part_id)


def predict_diffusion_entry_point(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(CITATION)
    try:
        run(args)
    except DiffusionPredictorError as e:
        sys.exit(f"{PROGRAM}: error: {' '.join(str(e).splitlines())}")


if __name__ == "__main__":  # nnU-Net's spawn workers re-import the main module
    predict_diffusion_entry_point()
