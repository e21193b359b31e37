#!/usr/bin/env bash
# One prepared check of the GPU paths (nnU-Net's AMP and torch.compile with our network and its hooks), <= 10 min:
#   1. the card; 2. train-step time and peak memory of each diffusion trainer relative to stock nnU-Net on the HC18
#   2d plans (targets: standard <= 1.05x, recycling <= 1.35x, memory <= 1.10x); 3. 5-step inference relative to
#   5 x stock, 2D; 4. seconds per MSD-Hippocampus-sized 3D case (3d_fullres patch 40x56x40) with 5 DDIM steps and
#   mirroring (target <= 2 s); 5. the 2-process DDP test of our training step (gloo; NCCL needs 2 GPUs).
#
#   bash benchmarks/gpu_check.sh                    # on a GPU machine: --device cuda, nnUNet_compile=t
#   bash benchmarks/gpu_check.sh --device cpu       # anywhere: the same steps, a few iterations, compile off
#
# Needs the HC18 plans (benchmarks/paper_claims.py --stage prepare, or the demo) under $nnUNet_preprocessed; without
# them the train-step part falls back to the unit tests' tiny plans. Results: docs/results/gpu_check_*.json.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# the checkout's .venv here; on the lent GPU machine (no .venv) the python3 that benchmarks/device_env.sh installed into
py=${PYTHON:-$([ -x "$repo/.venv/bin/python" ] && echo "$repo/.venv/bin/python" || echo python3)}
device=cuda
[ "${1:-}" = "--device" ] && device=${2:-cuda}
export nnUNet_compile=${nnUNet_compile:-$([ "$device" = cuda ] && echo t || echo f)}
export nnUNet_preprocessed=${nnUNet_preprocessed:-$repo/benchmark_data/evidence/hc18/nnUNet_preprocessed}
export nnUNet_raw=${nnUNet_raw:-$repo/benchmark_data/raw_unused} nnUNet_results=${nnUNet_results:-$repo/benchmark_data/results_unused}
rounds=$([ "$device" = cuda ] && echo 20 || echo 2)
out=$repo/docs/results
echo "=== device: $device, nnUNet_compile=$nnUNet_compile"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "=== train step vs stock"
trainers=(nnUNetTrainer nnUNetTrainerDiff nnUNetTrainerDiffRecycle nnUNetTrainerDiffRecycle_blockFiLM)
if [ -f "$nnUNet_preprocessed/Dataset520_HC18/nnUNetPlans.json" ]; then plans=(-d 520 -c 2d); else plans=(--tiny); fi
"$py" "$repo/benchmarks/train_step_speed.py" "${plans[@]}" --device "$device" --trainers "${trainers[@]}" \
    --warmup 2 --rounds "$rounds" -o "$out/gpu_check_train_step_$device.json"

echo "=== inference: 5 steps vs 5 x stock (2D, mirroring on and off)"
"$py" "$repo/benchmarks/inference_speed.py" --dim 2 --shape 256 256 --patch 128 128 --steps 5 --tta both \
    --device "$device" --repeats "$rounds" -o "$out/gpu_check_inference_2d_$device.json"

echo "=== inference: Hippocampus-sized 3D case, 5 steps, mirroring"
"$py" "$repo/benchmarks/inference_speed.py" --dim 3 --shape 36 50 36 --patch 40 56 40 --classes 3 --steps 5 \
    --tta on --device "$device" --repeats "$rounds" -o "$out/gpu_check_inference_3d_$device.json"

echo "=== DDP: our training step in 2 processes"
"$py" -m pytest -q -p no:cacheprovider "$repo/tests/training/test_ddp.py"
