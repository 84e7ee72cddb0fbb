#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (torch, timm, OpenCV; no napari needed).
# Run from the repository root:   OUT=/some/folder bash benchmarks/gpu_checks.sh
# About 8 minutes on one H100/H200; each step has its own time limit and failures do not stop
# the rest. Results: $OUT/gpu_bench.json (predict, train, ddp sections), $OUT/e2e/ (the real
# trainer end to end), $OUT/*.log. Copy the figures, with the GPU's name, into docs/benchmarks.md.
#   bash benchmarks/gpu_checks.sh --smoke   # the same steps, tiny settings, on the CPU (no GPU):
#                                           # checks the script and its paths, measures nothing
set -u
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-gpu_checks_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
  SMOKE_ARGS=(--smoke --device cpu --no-compile)  # torch.compile on a busy CPU: minutes
  E2E_ARGS=(--smoke)
  PYTEST_ARGS=(-k "cuda or gpu")  # collect the CUDA tests only (they skip without a GPU)
  PYTEST_LIMIT=600                # importing torch and timm on a busy CPU machine is slow
  E2E_LIMIT=600
  echo "smoke run on the CPU: no GPU figures" | tee "$OUT/gpu.txt"
else
  SMOKE_ARGS=()
  E2E_ARGS=()
  PYTEST_ARGS=()
  PYTEST_LIMIT=120
  E2E_LIMIT=150
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

# CUDA-only unit tests (device selection, autocast dtype, the inference engine on the GPU).
step pytest_cuda "$PYTEST_LIMIT" python3 -m pytest -q -p no:cacheprovider tests/model/test_devices.py \
  tests/model/test_networks.py tests/model/test_bundle.py tests/inference/test_classify.py \
  tests/inference/test_predict.py tests/inference/test_engines.py "${PYTEST_ARGS[@]}"
# Ensemble inference (target >= 2,000 cells/s at batch 256), stage-1 training (target >= 1,000
# images/s at batch 64), and the multi-GPU section (on one GPU it says so and measures that one).
step gpu_bench 330 python3 benchmarks/gpu_bench.py --budget-s 270 --out "$OUT/gpu_bench.json" \
  "${SMOKE_ARGS[@]}"
# The real trainer end to end: DataLoader workers, pinned memory, checkpoints, fine-tuning.
step e2e "$E2E_LIMIT" python3 benchmarks/gpu_train_e2e.py --out "$OUT/e2e" "${E2E_ARGS[@]}"
