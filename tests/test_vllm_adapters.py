"""strictcall.vllm's adapters, without vLLM (the main suite): turn specs from OpenAI requests, the grammar in vLLM's
structured-output shape, reading calls back, the bias rule and the `strictcall-vllm` command.

The grammar is walked by the harshest model, a random one, through vLLM's calls (`fill_bitmask` into a torch
int32 bitmask, `accept_tokens`, speculative `validate_tokens` and `rollback`): every finished turn must read
back as calls that name an offered tool and validate.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from strictcall.grammars.masks import unpack_token_bitmask
from strictcall.server.errors import APIError
from strictcall.server.model_loader import converted_gguf_dir, resolve_model
from strictcall.server.serving import build_grammars
from strictcall.vllm import cli
from strictcall.vllm.grammar import MatcherGrammar, TurnCompiler
from strictcall.vllm.output import TurnStream, auto_tool_bias, call_opening_bias, model_profile, read_turn, strictcall_options
from strictcall.vllm.turn_spec import TurnSpec, compile_turn_spec, is_turn_spec, turn_spec_from_request

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def turns(smollm2_tokenizer) -> TurnCompiler:
    return TurnCompiler(smollm2_tokenizer, 49152, disk_cache=False)


def spec_of(tools: list[dict], choice=None, parallel=None, format: str = "generic", **more) -> TurnSpec:
    spec = turn_spec_from_request({"tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel, **more}, format)
    assert spec is not None
    return spec


def bfcl_tool_sets(data_dir: Path, limit: int) -> list[list[dict]]:
    sets = []
    for name in ("simple.jsonl", "multiple.jsonl"):
        with open(data_dir / "bfcl" / name) as f:
            sets += [json.loads(line)["tools"] for line in f]
    random.Random(1).shuffle(sets)
    return [s for s in sets if s][:limit]


# ----- turn specs -----


def test_a_spec_survives_its_text_and_is_recognised() -> None:
    spec = spec_of([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, False,
                   response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}})
    text = spec.to_json()
    assert TurnSpec.from_json(text) == spec
    assert is_turn_spec(text) and not is_turn_spec('{"type": "structural_tag"}') and not is_turn_spec(None)
    assert spec.choice.mode == "named" and spec.choice.name == "get_time" and spec.parallel_tool_calls is False
    assert spec.answer is not None and spec.answer.strict
    assert [t.name for t in spec.tools] == ["get_weather", "get_time"]
    with pytest.raises(ValueError):
        TurnSpec.from_json('{"strictcall_turn": 99}')


def test_requests_without_a_call_to_make_stay_vllms() -> None:
    assert turn_spec_from_request({"tools": [WEATHER], "tool_choice": "none"}, "hermes") is None
    assert turn_spec_from_request({"tools": None, "tool_choice": None}, "hermes") is None
    assert spec_of([WEATHER]).choice.mode == "auto"  # tools and no choice: auto, as OpenAI


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "structured_outputs": {"regex": "a+"}}, "structured_outputs.regex"),
    ({"tools": [WEATHER], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "big", "parameters": {"type": "object", "description": "x" * 70_000}}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}]},
     "tools[1].function.parameters"),
])
def test_bad_requests_are_400s_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(APIError) as caught:
        turn_spec_from_request(body, "hermes")
    assert caught.value.status == 400 and caught.value.param == param


def test_a_strict_schema_that_cannot_be_enforced_names_its_tool(turns: TurnCompiler) -> None:
    tool = {"type": "function", "function": {"name": "tags", "strict": True, "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}}}}
    with pytest.raises(APIError) as caught:
        compile_turn_spec(turns.grammars("hermes").tool_compiler, spec_of([WEATHER, tool], format="hermes"))
    assert caught.value.status == 400 and caught.value.param == "tools[1].function.parameters"
    assert "strict" in caught.value.message
    tool["function"]["strict"] = False  # non-strict: the rest is enforced
    compile_turn_spec(turns.grammars("hermes").tool_compiler, spec_of([WEATHER, tool], format="hermes"))


def test_strictcall_options_are_checked() -> None:
    assert strictcall_options({"strictcall": {"auto_tool_bias": 2}}) == {"auto_tool_bias": 2}
    assert strictcall_options(None) == {}
    with pytest.raises(ValueError):
        strictcall_options({"strictcall": {"colour": "red"}})


# ----- the grammar, driven as vLLM drives it -----


def random_walk(grammar: MatcherGrammar, vocab_size: int, rng: np.random.Generator, ends: set[int], max_steps: int = 300) -> list[int] | None:
    """Random allowed tokens through vLLM's calls until an end token; each step also checks a speculative draft."""
    bitmask = torch.full((4, (vocab_size + 31) // 32), -1, dtype=torch.int32)
    tokens: list[int] = []
    for step in range(max_steps):
        grammar.fill_bitmask(bitmask, 2)
        allowed = unpack_token_bitmask(bitmask[2].numpy(), vocab_size)
        assert len(allowed), "a live turn always allows some token"
        allowed_ends = sorted(ends & set(allowed.tolist()))
        assert set(allowed.tolist()) & {0, 1, 2} <= ends, "only the request's own end tokens may end it"
        if step < 40:
            token = int(rng.choice(allowed))
        elif allowed_ends:
            token = allowed_ends[0]
        else:  # toward the end: the best of 12 random candidates by the bytes still needed
            scores = []
            for candidate in sorted(set(rng.choice(allowed, size=min(12, len(allowed))).tolist())):
                assert grammar.accept_tokens("r", [candidate])
                scores.append((grammar.matcher.min_bytes_to_end(), candidate))
                grammar.rollback(1)
            token = min(scores)[1]
        # A draft of the token and two more random ones: the prefix validated is accepted, and the state is unchanged.
        draft = [token, int(rng.integers(vocab_size)), int(rng.integers(vocab_size))]
        valid = grammar.validate_tokens(draft)
        assert valid[:1] == [token]
        grammar.fill_bitmask(bitmask, 3)
        assert torch.equal(bitmask[2], bitmask[3]), "validate_tokens moved the grammar"
        if len(valid) > 1:  # accept the draft, then roll it back, as vLLM does when the target model rejects it
            assert grammar.accept_tokens("r", valid)
            grammar.rollback(len(valid))
            grammar.fill_bitmask(bitmask, 3)
            assert torch.equal(bitmask[2], bitmask[3]), "rollback did not restore the state"
        assert grammar.accept_tokens("r", [token])
        tokens.append(token)
        if grammar.is_terminated():
            return tokens
    return None


@pytest.mark.parametrize("format_name", ["generic", "hermes", "llama3_json", "mistral"])
@pytest.mark.parametrize("mode", ["auto", "required", "named"])
def test_random_turns_through_vllms_interface_parse_and_validate(turns: TurnCompiler, smollm2_tokenizer, data_dir: Path, format_name: str,
                                                                mode: str) -> None:
    rng = np.random.default_rng(7)
    ends = {2}  # vLLM stops SmolLM2 on <|im_end|> (2); <|endoftext|> (0) must not end it
    finished = 0
    for parallel in (True, False):
        for tools in bfcl_tool_sets(data_dir, 4) + [[WEATHER, TIME]]:
            choice = {"type": "function", "function": {"name": tools[-1]["function"]["name"]}} if mode == "named" else mode
            spec = spec_of(tools, choice, parallel, format=format_name)
            grammar = turns.compile(spec.to_json(), stop_token_ids=ends)
            tokens = random_walk(grammar, 49152, rng, ends)
            if tokens is None:
                continue
            finished += 1
            grammars = turns.grammars(format_name)
            text = grammars.vocabulary.bytes_of(tokens[:-1]).decode("utf-8", errors="replace")  # free text may split a character; calls cannot
            content, calls = read_turn(grammars.format, text, spec.tool_names)
            schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
            if mode != "auto":
                assert calls and not content.strip(), text
            if mode == "named":
                assert {c.name for c in calls} == {choice["function"]["name"]}
            if not parallel:
                assert len(calls) <= 1
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    assert finished >= 6


def test_end_tokens_follow_the_request(turns: TurnCompiler) -> None:
    """The request's stop ids end the turn where the grammar may end, and only there; the vocabulary's others never."""
    spec = spec_of([WEATHER], "required", format="hermes")
    grammar = turns.compile(spec.to_json(), stop_token_ids={7})  # an arbitrary id standing for the request's stop token
    grammars = turns.grammars("hermes")
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    bitmask = torch.zeros((1, 49152 // 32), dtype=torch.int32)
    grammar.fill_bitmask(bitmask, 0)
    assert 7 not in unpack_token_bitmask(bitmask[0].numpy(), 49152).tolist()
    assert not grammar.accept_tokens("r", [7])
    ids = grammars.vocabulary.content_tokens  # walk the call byte by byte through matching tokens
    by_bytes = {grammars.vocabulary.token_bytes[i]: int(i) for i in ids.ids.tolist()}
    assert grammar.accept_tokens("r", [by_bytes[bytes([b])] for b in call.encode()])
    grammar.fill_bitmask(bitmask, 0)
    allowed = set(unpack_token_bitmask(bitmask[0].numpy(), 49152).tolist())
    assert 7 in allowed and not allowed & set(grammars.vocabulary.eos_token_ids)
    assert not grammar.accept_tokens("r", [grammars.vocabulary.eos_token_ids[0]])
    assert grammar.accept_tokens("r", [7]) and grammar.is_terminated()
    assert grammar.validate_tokens([7]) == []
    grammar.rollback(1)
    assert not grammar.is_terminated()
    grammar.reset()
    assert grammar.num_processed_tokens == 0 and not grammar.is_terminated()


def test_one_compile_cache_per_engine(turns: TurnCompiler) -> None:
    spec = spec_of([WEATHER, TIME], "auto", format="hermes").to_json()
    first, second = turns.compile(spec), turns.compile(spec)
    assert first.matcher is not second.matcher and first.matcher.turn is second.matcher.turn
    assert turns.grammars("hermes") is turns.grammars("hermes")


# ----- reading calls back -----


def test_streamed_deltas_add_up_and_a_cut_call_is_dropped(smollm2_tokenizer) -> None:
    fmt = build_grammars(smollm2_tokenizer, 49152, "hermes").format
    names = frozenset({"get_weather", "get_time"})
    text = ('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Pa')
    content, calls = read_turn(fmt, text, names)
    assert content == "Let me look. " and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    stream = TurnStream(fmt, names)
    pieces = [stream.feed(text[i:i + 3]) for i in range(0, len(text), 3)] + [stream.finish()]
    streamed_content = "".join(p.content for p in pieces)
    arguments: dict[int, str] = {}
    for piece in (c for p in pieces for c in p.tool_calls):
        arguments[piece.index] = arguments.get(piece.index, "") + piece.arguments
    assert streamed_content == content and arguments[0] == calls[0].arguments
    assert arguments[1].startswith('{"zone"')  # the cut call was streamed as it came; the non-streamed result drops it


def test_the_bias_follows_the_opening_only_while_the_output_is_on_it() -> None:
    opening = [27, 6854, 23, 6183, 30]
    assert call_opening_bias([], opening, 3.75) == 27
    assert call_opening_bias([27, 6854], opening, 3.75) == 23
    assert call_opening_bias([27, 99], opening, 3.75) is None
    assert call_opening_bias(opening, opening, 3.75) is None
    assert call_opening_bias([], opening, 0.0) is None


def test_the_bias_defaults_to_the_embedded_models_profile(monkeypatch) -> None:
    default_dir = str(converted_gguf_dir(resolve_model(None)))
    monkeypatch.delenv("STRICTCALL_AUTO_TOOL_BIAS", raising=False)
    assert model_profile(default_dir).auto_tool_bias == 3.75
    assert auto_tool_bias(default_dir, None) == 3.75 and auto_tool_bias("/elsewhere", None) == 0.0
    assert auto_tool_bias(default_dir, 1.5) == 1.5
    monkeypatch.setenv("STRICTCALL_AUTO_TOOL_BIAS", "2")
    assert auto_tool_bias("/elsewhere", None) == 2.0


# ----- the command -----


def test_the_command_configures_vllm_and_keeps_the_users_flags(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    command, env = cli.build_command(["--port", "8123", "--tensor-parallel-size", "2"], cuda=False)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == str(converted_gguf_dir(resolve_model(None)))
    assert command[command.index("--served-model-name") + 1] == "SmolLM2-135M-Instruct"
    expected = {"--host": "127.0.0.1", "--tool-call-parser": "strictcall", "--tokenizer-mode": "strictcall", "--logits-processors": cli.V1_BIAS}
    for flag, value in expected.items():
        assert command[command.index(flag) + 1] == value
    assert "--enable-auto-tool-choice" in command
    assert json.loads(command[command.index("--override-generation-config") + 1]) == {"temperature": 0.2, "top_p": 0.9}
    assert command[-4:] == ["--port", "8123", "--tensor-parallel-size", "2"]
    assert env["VLLM_CPU_OMP_THREADS_BIND"].count("|") == 1
    gpu, _ = cli.build_command(["--logits-processors", "mine:Mine", "--tool-call-parser", "hermes", "--host", "0.0.0.0"], cuda=True)
    assert gpu.count("--logits-processors") == 1 and gpu.count("--tool-call-parser") == 1 and gpu.count("--host") == 1
    assert cli.build_command([], cuda=True)[0].count(cli.V2_BIAS) == 1
    assert "--logits-processors" not in cli.build_command(["--speculative-config", "{}"], cuda=False)[0]


def test_the_command_takes_the_model_forms_strictcall_serve_takes(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    command, _ = cli.build_command([str(model_dir)], cuda=False)
    assert command[command.index("--model") + 1] == str(model_dir) and "--served-model-name" not in command
    assert "--override-generation-config" not in command  # only the embedded model has a profile's sampling
    assert cli.main([str(tmp_path / "missing")]) == 2
    if importlib.util.find_spec("vllm") is None:
        assert cli.main([str(model_dir)]) == 2  # says how to get vLLM instead of failing in exec
    assert cli.cpu_thread_binding(2, [0, 1]) == "0|1" and cli.cpu_thread_binding(2, [0, 1, 2, 3]) == "0-1|2-3"


def test_a_budget_closes_the_call_in_time(turns: TurnCompiler, smollm2_tokenizer) -> None:
    """With the request's budget set (as the plugin sets it in the engine core) to at least the shortest call in bytes,
    a random walk ends with a whole call."""
    rng = np.random.default_rng(3)
    spec = spec_of([WEATHER], "required", False, format="hermes")
    vocabulary = turns.grammars("hermes").vocabulary
    for extra in (0, 20):
        grammar = turns.compile(spec.to_json(), stop_token_ids={2})
        budget = grammar.matcher.min_bytes_to_end() + extra  # every byte is a token: the bound the mask keeps to
        grammar.budget = budget
        bitmask = torch.full((1, 49152 // 32), -1, dtype=torch.int32)
        tokens: list[int] = []
        while not grammar.is_terminated() and len(tokens) < budget:
            grammar.fill_bitmask(bitmask, 0)
            token = int(rng.choice(unpack_token_bitmask(bitmask[0].numpy(), 49152)))
            assert grammar.accept_tokens("r", [token])
            tokens.append(token)
        assert grammar.tokens_left() == budget - len(tokens)
        content, calls = read_turn(turns.grammars("hermes").format, vocabulary.bytes_of(tokens).decode(), spec.tool_names)
        assert len(calls) == 1, (budget, vocabulary.bytes_of(tokens))
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])
