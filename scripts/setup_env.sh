#!/usr/bin/env bash
# Creates (or reuses) the Python environment and installs nnunetv2-diffusion into it, editable.
# Progress goes to stderr; the only line on stdout is the environment's folder.
#
# torch: a torch that already imports together with torchvision, and that nnunetv2 2.8 and this package accept
# (>= 2.6, not 2.9.*), is kept as it is (a user's own CUDA build stays).
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
# nnunetv2 2.8 excludes torch 2.9.*, and this package needs torch >= 2.6: a pair outside that would be replaced by
# pip at the next step, downloading torch twice and losing the pairing.
case "$(uname -m)" in
    aarch64|arm64) pair="torch==2.8.0 torchvision==0.23.0"; pair_gib=2 ;;  # CPU builds
    *) pair="torch==2.14.1 torchvision==0.29.1"; pair_gib=7 ;;  # a CUDA build: about 5.5 GB installed
esac
torch_fits='import torch, torchvision
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
assert (major, minor) >= (2, 6) and (major, minor) != (2, 9)'
needs_torch=0
[ -x "$py" ] && "$py" -c "$torch_fits" >/dev/null 2>&1 || needs_torch=1

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
if ! "$py" -m pip --version >/dev/null 2>&1; then  # a venv made without pip (uv, or a failed python3 -m venv)
    echo "[setup] error: $venv has no pip: remove it (or set NNUNETV2_DIFFUSION_VENV to another folder) and run" \
         "this again; on Debian/Ubuntu, python3 -m venv needs the python3-venv package" >&2
    exit 1
fi
# A finished set-up of this checkout with the same dependency files is reused without the network (pip would
# contact the index for every install, so an offline rerun would fail although nothing is missing).
stamp="$venv/.nnunetv2_diffusion_setup"
fingerprint=$(cat "$repo/pyproject.toml" "$repo/setup.py" | sha256sum | cut -d' ' -f1)" $repo"
if [ "$needs_torch" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] \
        && "$py" "$repo/scripts/check_env.py" "[setup]" >/dev/null 2>&1; then
    echo "[setup] $venv is set up for this checkout already" >&2
    echo "$venv"
    exit 0
fi
rm -f "$stamp"
"$py" -m pip install -q --upgrade pip >&2

if [ "$needs_torch" = 1 ]; then
    echo "[setup] installing $pair" >&2
    # shellcheck disable=SC2086
    "$py" -m pip install -q $pair >&2
fi
echo "[setup] installing nnunetv2-diffusion (editable) with its test and benchmark extras" >&2
"$py" -m pip install -q -e "$repo[test,bench]" >&2
"$py" "$repo/scripts/check_env.py" "[setup]" >&2
echo "$fingerprint" > "$stamp"
echo "$venv"
