#!/usr/bin/env bash
# The evidence study's HC18 part on one GPU, prepared as one run: stock nnU-Net, 'block'-conditioned recycling, their
# ensemble at the weight chosen on validation and a second stock model for the seed-ensemble control, each trained
# 5000 iterations with nnU-Net's AMP and torch.compile. The three trainings share the card at the same time (a 2d
# HC18 model at batch 6 leaves most of it idle), then every model is predicted (DDPM, 5 steps, no mirroring) and
# evaluated on the 40 test images exactly as in the CPU study (benchmarks/evidence_study.py, budget_curve stage).
#
#   bash benchmarks/gpu_evidence_hc18.sh            # on the GPU machine (environment: benchmarks/device_env.sh);
#                                                   # run it again to continue a cut-short run
#   bash benchmarks/gpu_evidence_hc18.sh --smoke    # anywhere: 10 iterations per model on the CPU, compile off
#
# The smoke run writes its 10-iteration rows into this checkout's docs/results: run it in a scratch clone.
# Results: docs/results/evidence_hc18_budget_curve.csv (per case, with each model's training wall time; the three
# overlap), docs/results/evidence.json (hc18's budget_curve: the CPU study's 1000-iteration point and this run's)
# and docs/evidence_hc18_budget_curve.png, also copied into $OUT when it is set (the device tool's output folder).
# Environment: WORK (default <repo>/benchmark_data/evidence), PYTHON, nnUNet_n_proc_DA (default 4 a training on GPU).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# the checkout's .venv here; on the lent GPU machine (no .venv) the python3 that benchmarks/device_env.sh installed into
py=${PYTHON:-$([ -x "$repo/.venv/bin/python" ] && echo "$repo/.venv/bin/python" || echo python3)}
if [ "${1:-}" = --smoke ]; then
    device=cpu budget=10
    export nnUNet_compile=f nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0}
else
    device=cuda budget=5000
    export nnUNet_compile=t nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-4}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
study=("$py" "$repo/benchmarks/evidence_study.py" --dataset hc18 --work "${WORK:-$repo/benchmark_data/evidence}")
"${study[@]}" --stage prepare
# replicates 20 and 21: the CPU study's own 5000-iteration replicates (0, 1, ...) keep their rows beside these, and the
# report's paired_by_replicate "20" is the GPU run alone (its pooled 5000 entry pools both devices)
"${study[@]}" --stage budget_curve --budgets "$budget" --budget_replicates 20 --budget_stock_replicates 2 \
    --parallel_training --device "$device"
"${study[@]}" --stage report
if [ -n "${OUT:-}" ]; then
    cp "$repo/docs/results/evidence_hc18_budget_curve.csv" "$repo/docs/results/evidence.json" \
        "$repo/docs/evidence_hc18_budget_curve.png" "$OUT/"
fi
