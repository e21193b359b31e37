#!/usr/bin/env bash
# Creates (or reuses) the Python environment and installs nnunetv2-diffusion into it, editable.
# Progress goes to stderr; the only line on stdout is the environment's folder.
#
# torch: a torch that already imports together with torchvision is kept as it is (a user's own CUDA build stays).
# Otherwise a pair known to import together is installed: PyPI's torchvision wheels are built against one exact
# torch, and the CPU-only torch 2.13.0 wheel breaks `import torchvision` (and with it nnU-Net's trainer lookup).
#
# Environment: NNUNETV2_DIFFUSION_VENV (default: <repo>/.venv; the active virtualenv if one is active),
#              PYTHON (interpreter for a new venv, default python3),
#              NNUNETV2_DIFFUSION_MIN_FREE_GIB (free space demanded before torch is installed; default 7, 2 on arm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NNUNETV2_DIFFUSION_VENV:-${VIRTUAL_ENV:-$repo/.venv}}
py="$venv/bin/python"
case "$(uname -m)" in
    aarch64|arm64) pair="torch==2.9.1 torchvision==0.24.1"; pair_gib=2 ;;
    *) pair="torch==2.14.1 torchvision==0.29.1"; pair_gib=7 ;;  # a CUDA build: about 5.5 GB installed
esac
needs_torch=0
[ -x "$py" ] && "$py" -c "import torch, torchvision" >/dev/null 2>&1 || needs_torch=1

# Checked before anything is created: pip running out of space half way leaves a broken environment behind and
# an OSError buried in pages of pip output.
if [ "$needs_torch" = 1 ]; then
    min_gib=${NNUNETV2_DIFFUSION_MIN_FREE_GIB:-$pair_gib}
    probe=$venv
    while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
    free_kib=$(df -Pk "$probe" | awk 'NR == 2 {print $4}')
    if [ "$free_kib" -lt $((min_gib * 1024 * 1024)) ]; then
        echo "[setup] error: installing $pair into $venv needs about $min_gib GiB free," \
             "but the disk holding $probe has $((free_kib / 1024 / 1024)) GiB free." \
             "Free space there, or set NNUNETV2_DIFFUSION_VENV to a folder on a larger disk." >&2
        exit 1
    fi
fi

if [ ! -x "$py" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$py" -m pip install -q --upgrade pip >&2

if [ "$needs_torch" = 1 ]; then
    echo "[setup] installing $pair" >&2
    # shellcheck disable=SC2086
    "$py" -m pip install -q $pair >&2
fi
echo "[setup] installing nnunetv2-diffusion (editable) with its test and benchmark extras" >&2
"$py" -m pip install -q -e "$repo[test,bench]" >&2
"$py" "$repo/scripts/check_env.py" "[setup]" >&2
echo "$venv"
