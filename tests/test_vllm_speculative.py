"""strictcall on vLLM with speculative decoding (vLLM's n-gram drafter, which runs on the CPU): drafts go through
the grammar's `validate_tokens`, the bitmask of each draft position through `accept_tokens` / `rollback`, and
every finished call still parses and validates, greedy (drafts accepted) and sampled (most drafts rejected).

The prompt repeats the call's own text so the n-gram drafter has something to propose. Needs .venv-vllm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("vllm", reason="needs vLLM: scripts/install.sh vllm test, then .venv-vllm/bin/pytest tests/test_vllm_*.py")

pytestmark = pytest.mark.vllm

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
          "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
ASK = [{"role": "user", "content": f"Repeat exactly: {CALL} {CALL}"}]


def _metric(llm, name: str) -> float:
    return sum(getattr(m, "value", 0) or 0 for m in llm.get_metrics() if m.name == name)


def test_drafts_are_checked_by_the_grammar(random_llama_dir: Path) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from strictcall.vllm.offline import ToolTurn

    llm = LLM(model=str(random_llama_dir), tokenizer_mode="strictcall", dtype="float32", max_model_len=1024, max_num_seqs=8,
              disable_log_stats=False, seed=0,
              speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1})
    try:
        for mode in ("required", "named"):
            choice = {"type": "function", "function": {"name": "get_weather"}} if mode == "named" else mode
            turn = ToolTurn(llm, TOOLS, choice, parallel_tool_calls=False)
            results = turn.chat(ASK, max_tokens=80, temperature=0.0) + turn.chat(ASK, max_tokens=80, temperature=1.0, n=6, seed=4)
            finished = 0
            for content, calls in results:
                assert len(calls) <= 1 and not content.strip()
                for call in calls:
                    assert call.name == "get_weather"
                    jsonschema.validate(json.loads(call.arguments), SCHEMA)
                finished += bool(calls)
            assert finished >= 3
        assert _metric(llm, "vllm:spec_decode_num_draft_tokens") > 0
        assert _metric(llm, "vllm:spec_decode_num_accepted_tokens") > 0
    finally:
        del llm
