"""Checks of trained model folders, before the predictor loads them: readable files, loadable checkpoints, diffusion
settings, and whether a stock model can be ensembled with a diffusion model."""

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_diffusion.checkpoint_io import CheckpointError, load_checkpoint_file
from nnunetv2_diffusion.diffusion.config import DiffusionConfig
from nnunetv2_diffusion.inference.errors import DiffusionPredictorError
from nnunetv2_diffusion.inference.input_checks import read_json_file


def check_model_folder(folder: str, use_folds, checkpoint_name: str, require_diffusion: bool) -> list:
    """Checks a trained model folder and returns its folds: readable dataset.json and plans.json, every checkpoint
    loadable weights-only (:func:`load_checkpoint_file`) and trained for a configuration the plans hold; with
    ``require_diffusion`` also that every checkpoint carries diffusion settings (the network's extra state: what
    makes a checkpoint a diffusion model, whatever its trainer is called), the same in every fold. nnU-Net's loader
    then reads the checkpoints again with ``weights_only=False``; the weights-only load here refuses, before that,
    any file holding objects other than tensors and plain data."""
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
        extra_state = checkpoint.get("network_weights", {}).get("_extra_state")
        if not isinstance(extra_state, dict):
            raise DiffusionPredictorError(f"{folder} is not a diffusion model: checkpoint {path} (trainer "
                                          f"{checkpoint.get('trainer_name')}) has no diffusion settings (its "
                                          f"network_weights lack '_extra_state'); use nnUNetv2_predict for stock "
                                          f"models")
        try:
            configs[fold] = DiffusionConfig.from_dict(extra_state)
        except (TypeError, ValueError) as e:
            raise DiffusionPredictorError(f"checkpoint {path} has invalid diffusion settings: {e}") from None
    if len(set(configs.values())) > 1:
        raise DiffusionPredictorError(f"the folds of {folder} were trained with different diffusion settings: "
                                      f"{ {f: c.to_dict() for f, c in configs.items()} }")
    return folds


def check_same_labels(ours: dict, theirs: dict, our_source: str, their_source: str) -> None:
    for key in ("labels", "regions_class_order"):
        if ours.get(key) != theirs.get(key):
            raise DiffusionPredictorError(f"--ensemble_with {their_source} has other {key} than {our_source}: "
                                          f"{theirs.get(key)} vs {ours.get(key)}")
    if len(ours.get("channel_names", ours.get("modality", {}))) != \
            len(theirs.get("channel_names", theirs.get("modality", {}))):
        raise DiffusionPredictorError(f"--ensemble_with {their_source} takes another number of input channels than "
                                      f"{our_source}")


def check_same_preprocessing(our_plans: PlansManager, our_configuration, their_plans: PlansManager,
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
    for source, configuration in ((their_source, their_configuration), (our_source, our_configuration)):
        if configuration.previous_stage_name is not None:
            raise DiffusionPredictorError(f"{source} is a cascade stage; cascades are not supported for "
                                          f"--ensemble_with")


def _as_lists(value):
    """JSON-like comparison: tuples and lists are the same thing in plans."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value
