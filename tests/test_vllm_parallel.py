"""strictcall on vLLM across processes: tensor parallel 2 and pipeline parallel 2 (vLLM's multiprocessing executor,
two CPU workers), a random-weight 2-layer Llama with 4 heads (SmolLM2's 9 heads cannot split in two).

What this proves: the turn is compiled and masked in the engine core whatever the workers are, and the plugin
loads in every worker without disturbing it; every finished call still parses and validates. On a GPU machine
the same runs with `--tensor-parallel-size` / `--pipeline-parallel-size` (README).

Needs the .venv-vllm environment; skipped elsewhere. One engine per test (each a vLLM start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("vllm", reason="needs vLLM: scripts/install.sh vllm test, then .venv-vllm/bin/pytest tests/test_vllm_*.py")

pytestmark = pytest.mark.vllm

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}},
                                                                        "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _run(model: Path, **parallel: int) -> None:
    from vllm import LLM

    from strictcall.vllm.cli import cpu_thread_binding
    from strictcall.vllm.logits_processors import CallOpeningBias
    from strictcall.vllm.offline import ToolTurn

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # One NUMA node: each rank needs its own cores, or vLLM's automatic binding puts both on the same ones.
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(2, sorted(os.sched_getaffinity(0)))
    llm = LLM(model=str(model), tokenizer_mode="strictcall", dtype="float32", max_model_len=1024, max_num_seqs=8,
              distributed_executor_backend="mp", seed=0, logits_processors=[CallOpeningBias], **parallel)
    try:
        finished = 0
        for mode in ("required", "named", "auto"):
            choice = {"type": "function", "function": {"name": "get_time"}} if mode == "named" else mode
            turn = ToolTurn(llm, TOOLS, choice, parallel_tool_calls=False, auto_tool_bias=30.0)
            for _content, calls in turn.chat([{"role": "user", "content": "What is the weather in Paris?"}], max_tokens=200, temperature=1.0,
                                            n=4, seed=3):
                assert len(calls) <= 1
                for call in calls:
                    assert mode != "named" or call.name == "get_time"
                    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
                finished += bool(calls)
        assert finished >= 6
    finally:
        del llm


def test_tensor_parallel_2(random_llama_dir: Path) -> None:
    _run(random_llama_dir, tensor_parallel_size=2)


def test_pipeline_parallel_2(random_llama_dir: Path) -> None:
    _run(random_llama_dir, pipeline_parallel_size=2)
