#!/usr/bin/env bash
# Brings nnU-Net and this package to the lent GPU machine, for benchmarks/gpu_check.sh and gpu_evidence_hc18.sh.
#
# That machine's image has Python 3.12 with PyTorch, timm and the scientific stack, but not nnU-Net, and it reaches no
# package index. What is missing (nnunetv2, SimpleITK, blosc2, batchgenerators, ... and this package) comes to about
# 70 MB of wheels, SimpleITK alone 53 MB, while one device call carries at most 64 MiB including the tracked tree
# (about 46 MiB, most of it the shipped data). So the wheels travel xz-packed (about 40 MB) in parts of at most
# 16 MiB, one part a call, on a machine kept warm between the calls (it goes back after 30 s idle); each call stashes
# its part outside the checkout, and the last one installs.
#
#   bash benchmarks/device_env.sh pack       # here: .device_env/part_NN and .device_env/MANIFEST (git-ignored)
#   # there, one call per part, carry [".device_env/MANIFEST", ".device_env/part_NN"]:
#   bash benchmarks/device_env.sh stash      # keeps the carried parts in $DEVICE_ENV_STASH
#   bash benchmarks/device_env.sh install    # once every part is stashed: checks, unpacks, installs into python3's
#                                            # environment (--no-index --no-deps), then checks the trainer lookup
#
# Environment: PYTHON (the interpreter to install into, default python3), DEVICE_PYTHON_VERSION (wheels for, default
# 3.12), DEVICE_ENV_STASH (default /tmp/nnunetv2_diffusion_env), DEVICE_ENV_PART_MB (default 16).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
packed=$repo/.device_env
stash=${DEVICE_ENV_STASH:-/tmp/nnunetv2_diffusion_env}

# The distributions our environment needs that the device image lacks (its package list: the device tool's KINDS.md),
# at the versions the tests run with here. imagecodecs (28 MB) is left out: nothing on our code paths imports it.
missing=(nnunetv2 acvl-utils batchgenerators batchgeneratorsv2 dynamic-network-architectures blosc2 ndindex
         connected-components-3d simpleitk nibabel graphviz yacs future unittest2 traceback2 linecache2)

pack() {
    local here_py=${PYTHON:-$repo/.venv/bin/python} version=${DEVICE_PYTHON_VERSION:-3.12}
    local wheels
    wheels=$(mktemp -d)
    rm -rf "$packed" && mkdir -p "$packed"
    local pins
    pins=$("$here_py" - "${missing[@]}" <<'PY'
import importlib.metadata as md, sys
print(" ".join(f"{name}=={md.version(name)}" for name in sys.argv[1:]))
PY
)
    # shellcheck disable=SC2086
    for pin in $pins; do
        # a pure-Python sdist (acvl-utils has no wheel) is built here into a wheel; binaries must match the device
        "$here_py" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$wheels" "$pin" 2>/dev/null \
        || "$here_py" -m pip wheel -q --no-deps -w "$wheels" "$pin"
    done
    "$here_py" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" "$repo"
    # a fallback build of a binary package would target this machine's Python, not the device's
    local foreign
    foreign=$(ls "$wheels" | grep -v -e '-none-any\.whl$' -e "-cp${version/./}-" -e '-abi3-' || true)
    if [ -n "$foreign" ]; then
        echo "device_env: no wheel for Python $version of: $foreign" >&2; exit 1
    fi
    # wheels are deflated zips, which xz cannot shrink further; stored uncompressed (still valid wheels), they pack
    # to about 60 % of their size (SimpleITK: 53 -> 29 MB)
    "$here_py" - "$wheels" <<'PY'
import pathlib, sys, zipfile
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)  # before the type changes: read() decompresses by info.compress_type
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)
    stored.replace(wheel)
PY
    local count
    count=$(ls "$wheels" | wc -l)
    tar -C "$wheels" -cf - . | xz -6 -T0 | split -b "${DEVICE_ENV_PART_MB:-16}M" -d - "$packed/part_"
    (cd "$packed" && sha256sum part_* > MANIFEST)
    rm -rf "$wheels"
    echo "packed $count wheels for Python $version into $(wc -l < "$packed/MANIFEST") part(s) in $packed:" >&2
    ls -l "$packed" >&2
}

stash() {
    mkdir -p "$stash"
    cp "$packed/MANIFEST" "$stash/"
    local part
    for part in "$packed"/part_*; do cp "$part" "$stash/"; echo "stashed $(basename "$part")"; done
}

install() {
    local py=${PYTHON:-python3}
    (cd "$stash" && sha256sum --check --quiet MANIFEST) \
        || { echo "device_env: a part is missing or damaged in $stash; stash every part first" >&2; exit 1; }
    local wheels
    wheels=$(mktemp -d)
    cat "$stash"/part_* | xz -d | tar -C "$wheels" -xf -
    "$py" -m pip install -q --no-index --no-deps --no-compile "$wheels"/*.whl
    rm -rf "$wheels"
    "$py" "$repo/scripts/check_env.py" "device_env:"
}

case "${1:-}" in
    pack|stash|install) "$1" ;;
    *) echo "usage: bash benchmarks/device_env.sh pack|stash|install" >&2; exit 2 ;;
esac
