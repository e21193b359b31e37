#!/usr/bin/env bash
# nnU-Net's own integration procedure (nnunetv2/tests/integration_tests in the installed nnunetv2) with a
# short-budget diffusion trainer in place of nnUNetTrainer_5epochs, on the shipped MSD Hippocampus data:
#   convert -> plan (no preprocessing) -> add_lowres_and_cascade.py -> preprocess 2d, 3d_fullres, 3d_lowres ->
#   train 2d, 3d_fullres (fold 0), 3d_lowres (folds 0-4: their final validations write the cascade's
#   predicted_next_stage for every case), 3d_cascade_fullres (fold 0), all with --npz ->
#   nnUNetv2_find_best_configuration with ensembling (fold 0) -> predict the test cases with the selected model(s)
#   (a selected cascade stage first predicts its 3d_lowres stage) -> nnUNetv2_ensemble ->
#   nnUNetv2_apply_postprocessing -> nnUNetv2_evaluate_folder, and checks that every step wrote what it should.
# Then the residual-encoder preset: nnUNetPlannerResEncM, its 3d_fullres trained and predicted the same way.
# Every prediction is run twice: with stock nnUNetv2_predict (nnU-Net's procedure; per-tile sampling on a diffusion
# model) and with our nnUNetv2_predict_diffusion (global-step sampling, the recommended path). When the selection is
# a single model, the two best configurations are still ensembled, so nnUNetv2_ensemble always runs.
#
#   bash scripts/nnunet_integration_flow.sh        # about 40 min on 2 CPU cores; finished trainings are skipped
#
# Settings (environment): TRAINER (default nnUNetTrainerDiffRecycle_10iters); CASES, how many of the 208 shipped
# volumes make the dataset (default 60: every final validation samples each validation volume with 8 mirrors, about
# 25 s a volume in 3d_fullres on 2 cores); TEST_CASES, how many test volumes to predict (default 4); DEVICE (cpu);
# NNUNETV2_DIFFUSION_WORK (default <repo>/nnunet_data; this flow writes under <work>/integration_flow only).
# Ends with "integration flow passed" and exit code 0, or stops at the first failing step with its command's output.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/setup_env.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
work=${NNUNETV2_DIFFUSION_WORK:-$repo/nnunet_data}/integration_flow
trainer=${TRAINER:-nnUNetTrainerDiffRecycle_10iters}
device=${DEVICE:-cpu}
num_cases=${CASES:-60}
num_test=${TEST_CASES:-4}
export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-2} nnUNet_compile=${nnUNet_compile:-f}
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
dataset=999
name=Dataset999_Hippocampus
raw="$nnUNet_raw/$name"
results="$nnUNet_results/$name"
out="$work/predictions"
configurations=(2d 3d_fullres 3d_lowres 3d_cascade_fullres)
step() { echo; echo "=== $* ($(date +%T))"; }

if [ ! -f "$raw/dataset.json" ]; then
    step "convert the first $num_cases shipped MSD Hippocampus cases (the last 20 % become the test cases)"
    source="$work/msd_hippocampus_first_$num_cases"
    mkdir -p "$source/imagesTr" "$source/labelsTr"
    for image in $(ls "$repo/data/msd_hippocampus/imagesTr" | head -n "$num_cases"); do
        ln -sf "$repo/data/msd_hippocampus/imagesTr/$image" "$source/imagesTr/$image"
        ln -sf "$repo/data/msd_hippocampus/labelsTr/$image" "$source/labelsTr/$image"
    done
    python -m nnunetv2_diffusion.dataset_conversion.Dataset527_Hippocampus -i "$source" -d $dataset
    # the converter's single fixed fold would leave the cascade without previous-stage predictions of its training
    # cases: nnU-Net's own 5-fold split (made at the first training) lets the 3d_lowres folds cover every case. Both
    # copies go: nnU-Net's planner copies the raw folder's file into nnUNet_preprocessed.
    rm "$raw/splits_final.json" "$nnUNet_preprocessed/$name/splits_final.json"
fi
if [ ! -d "$nnUNet_preprocessed/$name/nnUNetPlans_3d_lowres" ]; then
    step "plan without preprocessing, add 3d_lowres and 3d_cascade_fullres (nnU-Net's script), preprocess"
    # nnUNet_n_proc_DA=0 crashes planning in nnU-Net 2.8.1; it is set only for training and prediction below
    nnUNetv2_plan_and_preprocess -d $dataset --verify_dataset_integrity --no_pp -np 2
    python -m nnunetv2.tests.integration_tests.add_lowres_and_cascade -d $dataset
    nnUNetv2_preprocess -d $dataset -c 2d 3d_fullres 3d_lowres -np 2 2 2
fi
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0}

train() {  # train <configuration> <fold>, skipped when its final validation exists
    if [ ! -f "$results/${trainer}__nnUNetPlans__$1/fold_$2/validation/summary.json" ]; then
        step "train $trainer $1 fold $2"
        nnUNetv2_train $dataset "$1" "$2" -tr "$trainer" -device "$device" --npz
    fi
}
train 2d 0
train 3d_fullres 0
# as in nnU-Net's procedure, all five 3d_lowres folds: their final validations write the next stage's input of
# every training case, which the cascade's fold 0 needs for its training cases as well as its validation cases
for fold in 0 1 2 3 4; do train 3d_lowres $fold; done
n_next_stage=$(ls "$results/${trainer}__nnUNetPlans__3d_lowres/predicted_next_stage/3d_cascade_fullres" | wc -l)
n_training=$(ls "$raw/labelsTr" | wc -l)
[ "$n_next_stage" -eq "$n_training" ] || {
    echo "3d_lowres final validations wrote $n_next_stage next-stage predictions for $n_training training cases"; exit 1; }
train 3d_cascade_fullres 0

step "nnUNetv2_find_best_configuration over the four configurations, fold 0, ensembling allowed"
nnUNetv2_find_best_configuration $dataset -c "${configurations[@]}" -tr "$trainer" -f 0 -np 2
cat "$results/inference_instructions.txt"

step "pick $num_test test cases"
mkdir -p "$work/imagesTs" "$work/labelsTs"
for image in $(ls "$raw/imagesTs" | head -n "$num_test"); do
    cp "$raw/imagesTs/$image" "$work/imagesTs/"
    cp "$raw/labelsTs/${image%_0000.nii.gz}.nii.gz" "$work/labelsTs/"
done

# the selection, one "configuration" per line; a single winner is joined by the runner-up so that ensembling runs
mapfile -t selected < <(python - "$results/inference_information.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
chosen = [m["configuration"] for m in info["best_model_or_ensemble"]["selected_model_or_models"]]
if len(chosen) == 1:  # all_results keys: "<trainer>__<plans>__<configuration>" and "ensemble___..."
    singles = sorted(((v, k.split("__")[-1]) for k, v in info["all_results"].items() if not k.startswith("ensemble")),
                     reverse=True)
    chosen.append(next(c for _, c in singles if c != chosen[0]))
print("\n".join(chosen))
PY
)
echo "ensembled configurations: ${selected[*]}"

predict_model() {  # predict_model <command> <configuration> <output folder>
    local command=$1 configuration=$2 target=$3 previous=()
    if [ "$configuration" = 3d_cascade_fullres ]; then
        predict_model "$command" 3d_lowres "$target.prev_stage"
        previous=(-prev_stage_predictions "$target.prev_stage")
    fi
    "$command" -i "$work/imagesTs" -o "$target" -d $dataset -c "$configuration" -f 0 -tr "$trainer" -device "$device" \
        -npp 1 -nps 1 --save_probabilities "${previous[@]}"
}

python_check() {  # python_check <prediction folder>: one segmentation per test case, labels within the dataset's
    python - "$1" "$work/imagesTs" <<'PY'
import os, sys
import numpy as np, SimpleITK as sitk
folder, images = sys.argv[1:]
cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images))
for case in cases:
    path = os.path.join(folder, f"{case}.nii.gz")
    assert os.path.isfile(path), f"missing {path}"
    labels = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(path))).tolist())
    assert labels <= {0, 1, 2}, f"{path} holds labels {labels}"
PY
}

selection() {  # selection <key>: a field of the selection nnUNetv2_find_best_configuration saved
    python -c "import json, sys; print(json.load(open(sys.argv[1]))['best_model_or_ensemble'][sys.argv[2]])" \
        "$results/inference_information.json" "$1"
}
postprocessing=$(selection postprocessing_file)
plans=$(selection some_plans_file)
for command in nnUNetv2_predict nnUNetv2_predict_diffusion; do
    members=()
    for configuration in "${selected[@]}"; do
        step "$command $configuration"
        predict_model $command "$configuration" "$out/$command/$configuration"
        python_check "$out/$command/$configuration"
        members+=("$out/$command/$configuration")
    done
    step "nnUNetv2_ensemble ${selected[*]}, then nnUNetv2_apply_postprocessing"
    nnUNetv2_ensemble -i "${members[@]}" -o "$out/$command/ensemble" -np 2
    nnUNetv2_apply_postprocessing -i "$out/$command/ensemble" -o "$out/$command/ensemble_postprocessed" \
        -pp_pkl_file "$postprocessing" -np 2 -plans_json "$plans" -dataset_json "$raw/dataset.json"
    for folder in "${members[@]}" "$out/$command/ensemble" "$out/$command/ensemble_postprocessed"; do
        python_check "$folder"
        nnUNetv2_evaluate_folder "$work/labelsTs" "$folder" -djfile "$raw/dataset.json" -pfile "$plans" \
            -o "$folder/summary.json" >/dev/null
    done
done

# nnU-Net's residual-encoder preset: plan, preprocess 3d_fullres, train, predict both ways
resenc=nnUNetResEncUNetMPlans
if [ ! -d "$nnUNet_preprocessed/$name/${resenc}_3d_fullres" ]; then
    step "plan nnUNetPlannerResEncM and preprocess its 3d_fullres"
    env -u nnUNet_n_proc_DA nnUNetv2_plan_experiment -d $dataset -pl nnUNetPlannerResEncM
    env -u nnUNet_n_proc_DA nnUNetv2_preprocess -d $dataset -plans_name $resenc -c 3d_fullres -np 2
fi
if [ ! -f "$results/${trainer}__${resenc}__3d_fullres/fold_0/validation/summary.json" ]; then
    step "train $trainer 3d_fullres fold 0 with $resenc"
    nnUNetv2_train $dataset 3d_fullres 0 -tr "$trainer" -p $resenc -device "$device" --npz
fi
for command in nnUNetv2_predict nnUNetv2_predict_diffusion; do
    step "$command 3d_fullres $resenc"
    folder="$out/$command/resenc_m_3d_fullres"
    "$command" -i "$work/imagesTs" -o "$folder" -d $dataset -c 3d_fullres -p $resenc -f 0 -tr "$trainer" \
        -device "$device" -npp 1 -nps 1
    python_check "$folder"
    nnUNetv2_evaluate_folder "$work/labelsTs" "$folder" -djfile "$raw/dataset.json" -pfile "$folder/plans.json" \
        -o "$folder/summary.json" >/dev/null
done

step "mean test Dice ($num_test cases; $trainer: a smoke budget, not a result)"
python - "$out" "$results/inference_information.json" <<'PY'
import json, os, sys
out, info = sys.argv[1], json.load(open(sys.argv[2]))
print("cross-validation (fold 0) Dice per candidate:")
for key, value in info["all_results"].items():
    print(f"  {value:.4f}  {key}")
for command in sorted(os.listdir(out)):
    for name in sorted(os.listdir(os.path.join(out, command))):
        summary = os.path.join(out, command, name, "summary.json")
        if os.path.isfile(summary):
            print(f"  {json.load(open(summary))['foreground_mean']['Dice']:.4f}  {command} {name}")
PY
echo "integration flow passed"
