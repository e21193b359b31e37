#!/usr/bin/env bash
# Stock nnUNetv2_predict (per-tile sampling through the network's image-only call) vs nnUNetv2_predict_diffusion
# (global-step sampling) with the same diffusion model, sampler (its stored default: DDPM, 5 steps), mirroring on,
# one process each, run one after the other; prints seconds per case and mean Dice of both and writes
# docs/results/stock_vs_global_step.json.
#
#   bash benchmarks/stock_vs_global_step.sh <diffusion model folder> <raw dataset folder (imagesTs, labelsTs)>
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${VENV_BIN:-$repo/.venv/bin}
model=$1 raw=$2 out=${3:-$repo/benchmark_data/stock_vs_global_step}
trainer=$(basename "$model" | awk -F'__' '{print $1}')
configuration=$(basename "$model" | awk -F'__' '{print $3}')
dataset=$(basename "$(dirname "$model")")
export nnUNet_results=$(dirname "$(dirname "$model")") nnUNet_n_proc_DA=0 nnUNet_compile=f
common=(-i "$raw/imagesTs" -d "$dataset" -c "$configuration" -f 0 -tr "$trainer" -device cpu -npp 1 -nps 1)
declare -A seconds
for path in stock global_step; do
    rm -rf "${out:?}/$path"
    start=$(date +%s.%N)
    if [ $path = stock ]; then "$bin/nnUNetv2_predict" "${common[@]}" -o "$out/$path" > "$out.$path.log" 2>&1
    else "$bin/nnUNetv2_predict_diffusion" "${common[@]}" -o "$out/$path" > "$out.$path.log" 2>&1; fi
    seconds[$path]=$(echo "$(date +%s.%N) - $start" | bc)
    "$bin/nnUNetv2_evaluate_folder" "$raw/labelsTs" "$out/$path" -djfile "$out/$path/dataset.json" \
        -pfile "$out/$path/plans.json" -o "$out/$path/summary.json" > /dev/null
done
"$bin/python" - "$out" "$(ls "$raw/imagesTs" | wc -l)" "${seconds[stock]}" "${seconds[global_step]}" "$repo" <<'PY'
import json, sys
out, cases, stock, global_step, repo = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
dice = {k: json.load(open(f"{out}/{k}/summary.json"))["foreground_mean"]["Dice"] for k in ("stock", "global_step")}
result = {"cases": cases, "seconds_per_case": {"stock_nnUNetv2_predict": stock / cases,
                                               "nnUNetv2_predict_diffusion": global_step / cases},
          "time_ratio_stock_to_global_step": stock / global_step,
          "mean_dice": {"stock_nnUNetv2_predict": dice["stock"], "nnUNetv2_predict_diffusion": dice["global_step"]}}
json.dump(result, open(f"{repo}/docs/results/stock_vs_global_step.json", "w"), indent=1)
print(json.dumps(result, indent=1))
PY
