#!/usr/bin/env bash
# The main job on a fresh machine, 2 CPU cores, no GPU:
#   set up the environment -> convert the shipped HC18 ultrasound data -> nnU-Net plan/preprocess ->
#   train xT-recycling diffusion and stock nnU-Net for 300 iterations each -> predict the held-out test split with
#   our nnUNetv2_predict_diffusion (diffusion alone, and ensembled with stock) and stock nnUNetv2_predict (stock) ->
#   print mean test Dice of each from nnU-Net's evaluator.
# Finished conversion, preprocessing and trainings are skipped when run again; prediction and evaluation rerun.
# Data and results go to $NNUNETV2_DIFFUSION_WORK (default <repo>/nnunet_data); set DEVICE=cuda on a GPU machine;
# BUDGET=_10iters gives a smoke run of a few minutes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/setup_env.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
work=${NNUNETV2_DIFFUSION_WORK:-$repo/nnunet_data}
device=${DEVICE:-cpu}
export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-2} nnUNet_compile=${nnUNet_compile:-f}
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
dataset=520
raw="$nnUNet_raw/Dataset520_HC18"
out="$work/predictions"
budget=${BUDGET:-_300iters}
diffusion=nnUNetTrainerDiffRecycle$budget
stock=nnUNetTrainer$budget
step() { echo; echo "=== $* ($(date +%T))"; }

if [ ! -f "$raw/dataset.json" ]; then
    step "convert HC18 (outlines filled, downsampled x4, split by subject)"
    python -m nnunetv2_diffusion.dataset_conversion.Dataset520_HC18 -i "$repo/data/hc18_fetal_head_us" -d $dataset
fi
if [ ! -f "$nnUNet_preprocessed/Dataset520_HC18/nnUNetPlans.json" ] || [ ! -d "$nnUNet_preprocessed/Dataset520_HC18/nnUNetPlans_2d" ]; then
    step "nnU-Net plan and preprocess (2d)"
    # nnUNet_n_proc_DA=0 crashes planning in nnU-Net 2.8.1; it is set only for training and prediction below
    nnUNetv2_plan_and_preprocess -d $dataset -c 2d --verify_dataset_integrity -np 2
fi
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0}
for trainer in $diffusion $stock; do
    if [ ! -f "$nnUNet_results/Dataset520_HC18/${trainer}__nnUNetPlans__2d/fold_0/checkpoint_final.pth" ]; then
        step "train $trainer"
        nnUNetv2_train $dataset 2d 0 -tr $trainer -device "$device"
    fi
done

step "predict the test split"
common=(-i "$raw/imagesTs" -d $dataset -c 2d -f 0 -device "$device" -npp 1 -nps 1)
# the recommended path for diffusion models: global-step sampling (stock nnUNetv2_predict would sample per tile)
nnUNetv2_predict_diffusion "${common[@]}" -o "$out/diffusion" -tr $diffusion
nnUNetv2_predict "${common[@]}" -o "$out/stock" -tr $stock
nnUNetv2_predict_diffusion "${common[@]}" -o "$out/ensemble" -tr $diffusion \
    --ensemble_with "$nnUNet_results/Dataset520_HC18/${stock}__nnUNetPlans__2d" --ensemble_weight 0.5

step "evaluate with nnU-Net's evaluator (test split, $(ls "$raw/labelsTs" | wc -l) images)"
for name in stock diffusion ensemble; do
    nnUNetv2_evaluate_folder "$raw/labelsTs" "$out/$name" -djfile "$out/$name/dataset.json" \
        -pfile "$out/$name/plans.json" -o "$out/$name/summary.json" >/dev/null
done
python - "$out" <<'PY'
import json, sys
print(f"{'model':<40} mean test Dice (fetal head)")
for name, what in (("stock", "stock nnU-Net"), ("diffusion", "xT-recycling diffusion, DDPM 5 steps"),
                   ("ensemble", "mean of both probabilities")):
    summary = json.load(open(f"{sys.argv[1]}/{name}/summary.json"))
    print(f"{what:<40} {summary['foreground_mean']['Dice']:.4f}")
PY
