#!/usr/bin/env bash
# The GPU checks issue #6 owes, as one call of the device tool (see /work/.library/device), run from
# the repository root there after `tools/device_wheels.sh` here:
#     run(command="bash tools/device_checks.sh", carry=[".whl"], timeout_s=590)
# Every step writes its log under $OUT (they come back); a failed step does not stop the next one.
#   1. the CUDA kernel tests (bf16 included), 2. tools/bench_kernels.py --quick (the full grid, as
#   JSON, runs last), 3. `dit-compress bench` of the toy PixArt at 50% of its block linears, on CUDA and CPU,
#   4. a resident `dit-compress run` on the GPU against the CPU (tests/test_runner.py -k gpu), and a
#   streamed one (tests/test_runner_stream.py -k gpu).
# On an H200 (2026-12-04, 520 s in all): cuda_tests had run 32 tests at 120 s and bench_cuda no warm-up step at
# 30 s (first use autotunes and times each layer's paths), hence 200 s and 90 s; the full grid got 68 of 84 rows.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "carry .whl (tools/device_wheels.sh)"; exit 1; }
rm -rf /tmp/repo && cp -r . /tmp/repo && rm -rf /tmp/repo/.whl
cd /tmp/repo || exit 1
export PYTHONPATH=/tmp/repo:/tmp/site

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
}

step gpu 20 sh -c 'nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "
import torch, triton, diffusers
print(torch.__version__, triton.__version__, diffusers.__version__, torch.cuda.get_device_name())"'
step cuda_tests 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/kernels
step kernels_quick 60 python3 tools/bench_kernels.py --quick
cat > /tmp/toy50.yaml <<'YAML'
version: 1
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 10, timesteps: 4, cfg_branches: true, batch_size: 40, seed: 0}
passes:
  - svd: {targets: [attention, cross_attention, mlp], ratio: 0.5, multiple: 8, compensate: false}
YAML
step toy_run 60 python3 -m compress.cli run /tmp/toy50.yaml --out /tmp/toy50 --overwrite
step bench_cuda 90 python3 -m compress.cli bench /tmp/toy50 --device cuda --batch 8 --json
step bench_cpu 30 python3 -m compress.cli bench /tmp/toy50 --device cpu --batch 8 --json
step gpu_run 90 python3 -m pytest -q -p no:cacheprovider tests/test_runner.py tests/test_calib.py -k "gpu or runs_device"
step gpu_stream_run 60 python3 -m pytest -q -p no:cacheprovider tests/test_runner_stream.py -k gpu
# last: the longest step, given what is left of TOTAL s (the call's timeout_s less 20); the quick grid
# above already gives numbers if this one is cut short
TOTAL=${TOTAL:-570}  # seconds the whole script may take (the call's timeout_s less 20)
step kernels_full $(( TOTAL - SECONDS > 20 ? TOTAL - SECONDS : 20 )) python3 tools/bench_kernels.py --json "$OUT/kernels.json"
echo "done in ${SECONDS}s" | tee -a "$OUT/summary.txt"
