#!/usr/bin/env bash
# The GPU test lane (issue 13): the headline path of a user on a real GPU — tests/test_gpu_*.py, run with
# `pytest -m gpu` (QLoRA through the studio's queue, Chat on the 4-bit model, merged export, verification) —
# then, with the time left, the device-dependent tests of the CPU suite, which check the CUDA outcome there.
# Records versions, timings, peak memory against the fit check's estimate and the 4-bit -> merged drift
# into one folder, $OUT: env.txt, log.txt, junit-*.xml, headline-gpu.json, gpu-memory.csv, results.json and
# results.md (the block for bench/RESULTS.md). About 5 minutes on one H100/H200; TOTAL_S caps it (480 s).
#
#   OUT=/some/folder bench/gpu_tests.sh       # on the GPU machine, from the project root, wheels in .whl/
#
# The GPU machine reaches no package registry and lacks bitsandbytes, trl, datasets, gradio and the studio's
# small dependencies. Before carrying the tree there, fetch the wheels here (Python 3.12, manylinux):
#   ../shared/gpu/fetch-wheels.sh sqlite-utils sqlite-fts4 click click-default-group tabulate pluggy \
#     fastapi starlette uvicorn h11 pytest iniconfig
# (gradio is not needed: the lanes never import studio.ui.) Then carry .whl with the tree.
#
# Without CUDA it says so, writes the summary and exits 3, having run nothing. Its own test on the CPU
# (tests/test_gpu_script.py) runs the whole flow with ALLOW_CPU=1 SKIP_WHEELS=1, where the gpu tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-tests-out}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-480}
GPU_TESTS=${GPU_TESTS:-tests/test_gpu_*.py}
# the CPU suite's tests whose assertions ask the device (4-bit, bf16, NF4, CUDA memory); no gradio needed
DEVICE_TESTS=${DEVICE_TESTS:-tests/test_training_recipe.py tests/test_fitcheck.py tests/test_models_params.py \
tests/test_endpoints.py::test_four_bit_serving_on_cuda_and_its_refusal_elsewhere tests/test_publish_drift.py}
DEVICE_K=${DEVICE_K:-not publish_tab and not golden_set}
DEVICE_MIN_S=${DEVICE_MIN_S:-120}   # the device lane runs only with this much time left
start=$(date +%s)
left() { echo $(( TOTAL_S - ($(date +%s) - start) )); }
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_VERBOSITY=warning \
  HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 GPU_RESULTS="$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

finish() {
  echo $(( $(date +%s) - start )) > "$OUT/seconds.txt"
  $PY bench/gpu_summary.py "$OUT" || echo "the summary failed (see above)"
  exit "$1"
}

if [ -z "${SKIP_WHEELS:-}" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing the carried wheels from .whl/ failed"; finish 4; }
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  else
    echo "no wheels in .whl/: using what this Python has (fetch them with ../shared/gpu/fetch-wheels.sh, above)"
  fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /' \
    || echo "nvidia-smi: none"
  $PY - <<'EOF'
import importlib, platform
from importlib import metadata
print("python", platform.python_version())
for module, dist in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"), ("trl", "trl"),
                     ("accelerate", "accelerate"), ("bitsandbytes", "bitsandbytes"), ("datasets", "datasets"),
                     ("pydantic", "pydantic"), ("sqlite_utils", "sqlite-utils"), ("fastapi", "fastapi"),
                     ("uvicorn", "uvicorn"), ("huggingface_hub", "huggingface-hub"), ("pytest", "pytest")):
    try:
        importlib.import_module(module)
        print(module, metadata.version(dist))
    except Exception as exc:  # a missing one is a fact to record here; the check below stops the run
        print(module, "MISSING:", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
import torch
print("cuda", torch.version.cuda, "available" if torch.cuda.is_available() else "NOT available")
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
          f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
EOF
} | tee "$OUT/env.txt"

if grep -q "MISSING" "$OUT/env.txt"; then
  echo "Missing packages (above): carry their wheels in .whl/ (the fetch-wheels.sh line at the top of this script)."
  finish 4
fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "No CUDA GPU here (torch.cuda.is_available() is False): the gpu lane needs one."
  echo "no CUDA" > "$OUT/no-cuda.txt"
  if [ -z "${ALLOW_CPU:-}" ]; then
    echo "Nothing was run. Run this script on the GPU machine (ALLOW_CPU=1 runs the flow anyway, gpu tests skipped)."
    finish 3
  fi
fi

if command -v nvidia-smi >/dev/null 2>&1; then  # the whole device's memory, once a second, beside torch's own peak
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -l 1 > "$OUT/gpu-memory.csv" &
  sampler=$!
  trap 'kill $sampler 2>/dev/null' EXIT
fi

echo "=== gpu lane: pytest -m gpu $GPU_TESTS ($(left)s left)"
# shellcheck disable=SC2086  # the test paths are words
timeout "$(( $(left) - 20 ))" $PY -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/junit-gpu.xml" $GPU_TESTS
gpu_rc=$?
echo "gpu lane exit code: $gpu_rc"

if [ "$(left)" -ge "$DEVICE_MIN_S" ]; then
  echo "=== device lane: the CPU suite's device-dependent tests ($(left)s left)"
  # shellcheck disable=SC2086
  timeout "$(( $(left) - 15 ))" $PY -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit-device.xml" \
    -k "$DEVICE_K" $DEVICE_TESTS
  echo "device lane exit code: $?"
else
  echo "=== device lane skipped: $(left)s left, it needs $DEVICE_MIN_S"
fi
if [ -n "${sampler:-}" ]; then kill "$sampler" 2>/dev/null; fi
echo "=== done in $(( $(date +%s) - start ))s"
finish "$gpu_rc"
