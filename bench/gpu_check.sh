#!/usr/bin/env bash
# The cuda (Triton) backend on a GPU machine with no network, in under 8 minutes on an H100
# (Python with torch, triton and numba preinstalled):
#   1. install: edgeformer editable without dependencies, plus, from the wheels in $WHEELS
#      (bench/wheels), whichever of its core dependencies and pytest are missing
#      (transformers too if its wheels are there: the bench then compares with it);
#   2. `edgeformer check-backend cuda`: the conformance suite on the compiled kernels;
#   3. `pytest tests/backends/cuda`: every kernel test on the GPU, and the `gpu`-marked
#      model parity tests;
#   4. bench/gpu_bench.py: decode and pp512 tok/s, copy bandwidth and bf16 matmul peak,
#      HF eager and torch.compile -> bench/results/gpu_bench.json and a markdown table;
#   5. `edgeformer perf validate --backend cuda --quick`: calibrates the perf model on the
#      GPU (its ceilings measured by torch: `backends/cuda/ceilings.py`), then predicted
#      against measured TTFT, prefill and decode -> bench/results/gpu_validate.{json,md}.
# Each step has a time limit (together under 8 min); a step that fails or runs out is
# reported and the next one runs; the exit status is 1 if any failed.
#
#   bash bench/gpu_check.sh                  # on the GPU machine (PYTHON= picks the interpreter)
#   bash bench/gpu_check.sh --fetch-wheels   # beforehand, with network: the wheels, for Python 3.12 x86_64
#   bash bench/gpu_check.sh --dry-run        # without a GPU: no install; steps 3 and 4 in Triton's interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-bench/wheels}
BUDGET=${BUDGET:-470}          # seconds for the whole check
MODE=${1:-run}

# requirements of the check: the core dependencies (pyproject.toml) and pytest
reqs() {
  "$PY" - <<'EOF'
import re
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps + ["pytest", "setuptools>=68", "wheel"]
               if re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] not in ("numpy", "numba")))
EOF
}

# those of `reqs` not installed (by distribution name; versions not checked)
missing() {
  "$PY" - "$@" <<'EOF'
import importlib.metadata as md
import re
import sys
out = []
for d in sys.argv[1:]:
    try:
        md.version(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0])
    except md.PackageNotFoundError:
        out.append(d)
print(" ".join(out))
EOF
}

if [ "$MODE" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2046
  exec "$PY" -m pip download --dest "$WHEELS" --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    $(reqs) transformers
fi

FAILED=()
step() {                       # step NAME SECONDS COMMAND...: run with a time limit, note a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s, ${SECONDS}s elapsed)"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] && echo "=== $name: ran out of time (${limit}s)" || echo "=== $name: failed (exit $rc)"
    FAILED+=("$name")
  fi
}

"$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"triton", triton.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
command -v nvidia-smi >/dev/null && nvidia-smi -L

if [ "$MODE" = "--dry-run" ]; then
  export TRITON_INTERPRET=1
  step "cuda tests (interpreter)" 300 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider tests/backends/cuda
  step "gpu_bench --dry-run" 300 "$PY" bench/gpu_bench.py --dry-run --models llama-tiny --qtypes Q4_0
else
  # shellcheck disable=SC2046
  need=$(missing $(reqs))
  if [ -n "$need" ]; then
    step "install dependencies ($need)" 60 "$PY" -m pip install -q --no-index --find-links "$WHEELS" $need
  fi
  if [ -n "$(missing transformers)" ] && ls "$WHEELS"/transformers-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" transformers \
      || echo "=== transformers did not install: the bench runs without HF"
  fi
  step "install edgeformer" 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  step "check-backend cuda" 120 "$PY" -m edgeformer.cli check-backend cuda
  step "pytest tests/backends/cuda" 120 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider tests/backends/cuda
  left=$((BUDGET - SECONDS - 150))
  step "gpu_bench" $((left > 60 ? left : 60)) "$PY" bench/gpu_bench.py
  step "perf validate" 150 "$PY" -m edgeformer.cli perf validate --backend cuda --quick --clock wall \
    --json bench/results/gpu_validate.json --markdown bench/results/gpu_validate.md
fi

echo "=== done in ${SECONDS}s"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf '=== failed: %s\n' "${FAILED[@]}"
  exit 1
fi
