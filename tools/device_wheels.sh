#!/usr/bin/env bash
# Fetch, on this (CPU) machine, the wheels the GPU machine's image lacks, into .whl/ (git-ignored
# through .git/info/exclude) for `tools/device_checks.sh`, which the device tool runs with
# carry: [".whl"]. That image has Python 3.12, torch, triton, huggingface_hub and safetensors, but
# not diffusers (nor importlib_metadata, which diffusers imports).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    diffusers==0.42.1 importlib_metadata==8.7.0
ls -l .whl
