#!/usr/bin/env bash
# Creates (or reuses) the Python environment and installs nnunetv2-diffusion into it, editable.
# Progress goes to stderr; the only line on stdout is the environment's folder.
#
# torch: a torch that already imports together with torchvision is kept as it is (a user's own CUDA build stays).
# Otherwise a pair known to import together is installed: PyPI's torchvision wheels are built against one exact
# torch, and the CPU-only torch 2.13.0 wheel breaks `import torchvision` (and with it nnU-Net's trainer lookup).
#
# Environment: NNUNETV2_DIFFUSION_VENV (default: <repo>/.venv; the active virtualenv if one is active),
#              PYTHON (interpreter for a new venv, default python3).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NNUNETV2_DIFFUSION_VENV:-${VIRTUAL_ENV:-$repo/.venv}}
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >&2

if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
    case "$(uname -m)" in
        aarch64|arm64) pair="torch==2.9.1 torchvision==0.24.1" ;;
        *) pair="torch==2.14.1 torchvision==0.29.1" ;;
    esac
    echo "[setup] installing $pair" >&2
    # shellcheck disable=SC2086
    "$py" -m pip install -q $pair >&2
fi
echo "[setup] installing nnunetv2-diffusion (editable) with its test and benchmark extras" >&2
"$py" -m pip install -q -e "$repo[test,bench]" >&2
"$py" "$repo/scripts/check_env.py" "[setup]" >&2
echo "$venv"
