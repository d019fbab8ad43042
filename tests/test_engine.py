"""The engine: continuous batching, grammar masks, jump-forward, prefix reuse, cancellation, isolation.

A tiny random-weight Llama over the SmolLM2 vocabulary makes the grammar do all the work: every finished
constrained output must be valid whatever the logits say.
"""

from __future__ import annotations

import asyncio
import copy
import logging

import jsonschema
import pytest
import torch

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.formats import GENERIC
from strictcall.grammars.tools import ToolChoice, ToolGrammarCompiler, ToolSpec
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.kernels import SamplingParams
from strictcall.server.engine import Engine, EngineConfig, EngineRequestError
from strictcall.server.model_runner import ModelRunner
from strictcall.server.sequence import EngineEvent, EngineRequest
from strictcall.server.tool_prompt import render_tools_prompt

GREEDY = SamplingParams(temperature=0.0)
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def specs(tools: list[dict]) -> list[ToolSpec]:
    return [ToolSpec(t["function"]["name"], t["function"]["parameters"]) for t in tools]


def make_engine(model, vocabulary, tokenizer, *, slots: int = 4, jump_forward: bool = True, chunk: int = 256) -> Engine:
    return Engine(ModelRunner(model, slots, 512), vocabulary, tokenizer, EngineConfig(prefill_chunk_tokens=chunk, jump_forward=jump_forward))


def run(engine: Engine, requests: list[EngineRequest], join_after: dict[str, int] | None = None, max_steps: int = 2000) -> dict[str, list[EngineEvent]]:
    """Drive the engine by hand; a request in `join_after` is submitted after that many steps."""
    events: dict[str, list[EngineEvent]] = {r.request_id: [] for r in requests}
    join_after = join_after or {}
    pending = list(requests)
    for step in range(max_steps):
        for request in [r for r in pending if join_after.get(r.request_id, 0) <= step]:
            engine.submit(request, events[request.request_id].append)
            pending.remove(request)
        engine._drain_inbox(block=False)
        engine.step()
        if not pending and all(e and e[-1].finish_reason for e in events.values()):
            return events
    raise AssertionError("requests did not finish")


def output_ids(events: list[EngineEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def text(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events)


def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(t) for t in ("What is the weather in Paris?", "Hi", "Tell me the time in Berlin, please, now.")]


def test_batched_greedy_equals_one_at_a_time_with_joins(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    requests = [EngineRequest(f"r{i}", p, GREEDY, max_tokens=12) for i, p in enumerate(prompts(smollm2_tokenizer))]
    alone = {r.request_id: output_ids(run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer), [r])[r.request_id]) for r in requests}
    together = run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, chunk=4), requests, join_after={"r1": 3, "r2": 7})
    for r in requests:
        assert output_ids(together[r.request_id]) == alone[r.request_id], \
            (r.request_id, [(e.token_ids, e.finish_reason, e.error) for e in together[r.request_id]])
        assert together[r.request_id][-1].finish_reason == "length"
        assert together[r.request_id][-1].num_output_tokens == 12


@pytest.mark.parametrize("jump_forward", [True, False])
def test_random_model_constrained_outputs_are_valid_tool_calls(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, jump_forward: bool) -> None:
    turn = ToolGrammarCompiler(GrammarCompiler(smollm2_vocabulary), GENERIC).compile_turn(specs(TOOLS), "required")
    requests = [
        EngineRequest(f"r{seed}", prompts(smollm2_tokenizer)[seed % 3], SamplingParams(temperature=1.0, seed=seed), max_tokens=200, grammar=turn)
        for seed in range(6)
    ]
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, jump_forward=jump_forward)
    results = run(engine, requests)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    num_complete = 0
    for events in results.values():
        out = text(events)
        if events[-1].finish_reason == "length":  # cut short: still a prefix of a call
            assert out.startswith("<tool_call>\n") or "<tool_call>\n".startswith(out)
            continue
        assert events[-1].finish_reason == "stop", events[-1].error
        _, calls = GENERIC.parse_tool_calls(out)
        assert calls
        for call in calls:
            jsonschema.validate(call.arguments, schemas[call.name])
        num_complete += 1
    assert num_complete >= 3
    if jump_forward:
        assert engine.stats.num_jump_forward_tokens > 0
    else:
        assert engine.stats.num_jump_forward_tokens == 0


def test_jump_forward_saves_model_steps_and_keeps_greedy_output_valid(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    turn = ToolGrammarCompiler(GrammarCompiler(smollm2_vocabulary), GENERIC).compile_turn(specs(TOOLS), ToolChoice.named("get_time"))
    request = EngineRequest("r", prompts(smollm2_tokenizer)[0], GREEDY, max_tokens=100, grammar=turn)
    steps = {}
    outputs = {}
    for jump in (False, True):
        engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, jump_forward=jump)
        events = run(engine, [request])["r"]
        outputs[jump] = text(events)
        steps[jump] = engine.stats.num_steps
    for out in outputs.values():
        _, calls = GENERIC.parse_tool_calls(out)
        assert [c.name for c in calls] == ["get_time"] and calls[0].arguments["zone"] in ("UTC", "CET")
    assert steps[True] < 0.7 * steps[False]
    assert engine.stats.grammar_seconds > 0


@pytest.mark.parametrize("logprobs", [False, True])
def test_a_sampled_token_and_the_forced_text_after_it_are_split_as_the_tokenizer_would(
        tiny_llama, smollm2_vocabulary, smollm2_tokenizer, logprobs: bool) -> None:
    # The model is pushed to start the name with `ec` (only `ecological_impact` starts so); the rest of the name
    # is then forced. Tokenized on its own it would be `ological`, `_`, ...: together it is `ecological`, `_`, ...
    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
             for name in ("ecological_impact", "financial_ratios")]
    turn = ToolGrammarCompiler(GrammarCompiler(smollm2_vocabulary), GENERIC).compile_turn(specs(tools), "required")
    (ec,) = smollm2_tokenizer.encode("ec", add_special_tokens=False)
    sampling = SamplingParams(temperature=0.0, logprobs=logprobs, top_logprobs=2 if logprobs else 0)
    request = EngineRequest("r", prompts(smollm2_tokenizer)[0], sampling, max_tokens=60, grammar=turn, logit_bias=((ec, 100.0),))
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    events = run(engine, [request])["r"]
    ids, out = output_ids(events), text(events)
    assert GENERIC.parse_tool_calls(out)[1][0].name == "ecological_impact"
    content = [t for t in ids if t not in smollm2_vocabulary.eos_token_ids]
    assert ec not in content and content == smollm2_tokenizer.encode(out, add_special_tokens=False)  # the whole call
    if logprobs:
        entries = [entry for e in events for entry in e.logprobs]
        assert [entry.token_id for entry in entries] == ids
        merged = next(entry for entry in entries if smollm2_vocabulary.token_bytes[entry.token_id] == b"ecological")
        assert len(merged.top) == 2  # the model's own choice (of `ec`, with its alternatives), not a forced token


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_matches_cpu_and_keeps_calls_valid(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    # On CUDA the bitmasks are filled while the forward runs asynchronously; the outputs must not change.
    turn = ToolGrammarCompiler(GrammarCompiler(smollm2_vocabulary), GENERIC).compile_turn(specs(TOOLS), "required")
    requests = [EngineRequest(f"r{i}", p, GREEDY, max_tokens=60, grammar=turn) for i, p in enumerate(prompts(smollm2_tokenizer))]
    on_cpu = run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer), requests)
    on_gpu = run(make_engine(copy.deepcopy(tiny_llama).cuda(), smollm2_vocabulary, smollm2_tokenizer), requests)
    for r in requests:
        assert output_ids(on_gpu[r.request_id]) == output_ids(on_cpu[r.request_id])


def test_prefix_of_a_finished_request_is_reused(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    prompt = prompts(smollm2_tokenizer)[2]
    first = run(engine, [EngineRequest("a", prompt, GREEDY, max_tokens=5)])["a"]
    second = run(engine, [EngineRequest("b", prompt + [11, 12], GREEDY, max_tokens=5)])["b"]
    again = run(engine, [EngineRequest("c", prompt, GREEDY, max_tokens=5)])["c"]
    assert second[-1].num_cached_tokens == len(prompt)
    assert again[-1].num_cached_tokens == len(prompt) - 1
    assert output_ids(again) == output_ids(first)


def test_stop_strings_and_max_tokens(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    grammar = GrammarCompiler(smollm2_vocabulary).compile_regex("abc(def)+")
    events = run(engine, [EngineRequest("s", [1, 2, 3], GREEDY, max_tokens=50, stop=("de",), grammar=grammar)])["s"]
    assert text(events) == "abc" and events[-1].finish_reason == "stop"


def test_a_failing_request_leaves_the_others_untouched(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    impossible = GrammarCompiler(smollm2_vocabulary).compile_regex("[^\\x00-\\U0010FFFF]")
    good = EngineRequest("good", prompts(smollm2_tokenizer)[0], GREEDY, max_tokens=8)
    reference = output_ids(run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer), [good])["good"])
    results = run(engine, [good, EngineRequest("bad", [1, 2], GREEDY, grammar=impossible)])
    assert results["bad"][-1].finish_reason == "error" and "matches no string" in results["bad"][-1].error
    assert output_ids(results["good"]) == reference


def test_cancellation_frees_the_slot(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, slots=1)
    engine.start()
    try:
        async def scenario() -> tuple[list[EngineEvent], list[EngineEvent]]:
            first: list[EngineEvent] = []
            async with engine.generate([EngineRequest("long", [1, 2, 3], GREEDY, max_tokens=400)]) as stream:
                async for _, event in stream:
                    first.append(event)
                    if len(first) == 3:
                        break  # the client goes away: leaving the block aborts the request
            second = [e async for _, e in engine.generate([EngineRequest("next", [1, 2, 3], GREEDY, max_tokens=4)])]
            return first, second

        first, second = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
        assert len(first) == 3 and second[-1].finish_reason == "length"
        assert engine.stats.num_running == 0
    finally:
        engine.shutdown()


def test_bad_submissions_are_refused_up_front(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    with pytest.raises(EngineRequestError, match="context"):
        engine.submit(EngineRequest("x", [1] * 600), lambda e: None)
    with pytest.raises(EngineRequestError, match="max_tokens"):
        engine.submit(EngineRequest("x", [1], max_tokens=0), lambda e: None)
    with pytest.raises(EngineRequestError, match="min_tokens"):
        engine.submit(EngineRequest("x", [1], max_tokens=4, min_tokens=5), lambda e: None)


def test_min_tokens_holds_back_the_end_of_sequence(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    # A head that always prefers EOS, then token 42: without min_tokens the turn ends at once.
    model = copy.deepcopy(tiny_llama)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(model.lm_head.weight)
    torch.nn.init.zeros_(model.lm_head.bias)
    eos = smollm2_vocabulary.eos_token_ids[0]
    with torch.no_grad():
        model.lm_head.bias[eos], model.lm_head.bias[42] = 10.0, 5.0
    engine = make_engine(model, smollm2_vocabulary, smollm2_tokenizer)
    results = run(engine, [EngineRequest("free", [1, 2, 3], GREEDY, max_tokens=20), EngineRequest("held", [1, 2, 3], GREEDY, max_tokens=20, min_tokens=5)])
    assert output_ids(results["free"]) == [eos]
    assert output_ids(results["held"]) == [42] * 5 + [eos] and results["held"][-1].finish_reason == "stop"
    assert engine.stats.forward_seconds > 0 and engine.stats.grammar_seconds == 0


def test_batched_equals_single_on_smollm2(smollm2_model) -> None:
    model, tokenizer = smollm2_model
    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    turn = ToolGrammarCompiler(GrammarCompiler(vocabulary), GENERIC).compile_turn(specs(TOOLS), "required", parallel_tool_calls=False)
    system = render_tools_prompt(GENERIC, [t["function"] for t in TOOLS], "required")
    chat = [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                          add_generation_prompt=True) for q in ("What's the weather in Paris for 3 days?", "What time is it in UTC?")]
    chat = [ids if isinstance(ids, list) else ids["input_ids"] for ids in chat]
    requests = [EngineRequest(f"q{i}", ids, GREEDY, max_tokens=60, grammar=turn) for i, ids in enumerate(chat)]
    alone = [output_ids(run(make_engine(model, vocabulary, tokenizer), [r])[r.request_id]) for r in requests]
    together = run(make_engine(model, vocabulary, tokenizer), requests)
    assert [output_ids(together[r.request_id]) for r in requests] == alone
    finished = [r for r in requests if together[r.request_id][-1].finish_reason == "stop"]
    assert finished, "neither turn finished within 60 tokens"
    for r in finished:
        _, calls = GENERIC.parse_tool_calls(text(together[r.request_id]))
        assert calls
        for call in calls:
            jsonschema.validate(call.arguments, SCHEMAS[call.name])


def test_call_opening_bias_follows_the_opening_only_while_the_output_is_on_it(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    prompt = prompts(smollm2_tokenizer)[0]
    opening = tuple(smollm2_tokenizer.encode("<tool_call>", add_special_tokens=False))
    results = run(engine, [
        EngineRequest("plain", prompt, GREEDY, max_tokens=8),
        EngineRequest("pushed", prompt, GREEDY, max_tokens=8, call_opening=opening, call_opening_bias=100.0),
        EngineRequest("pulled", prompt, GREEDY, max_tokens=8, call_opening=opening, call_opening_bias=-100.0),
    ])
    plain, pushed, pulled = (output_ids(results[k]) for k in ("plain", "pushed", "pulled"))
    assert tuple(pushed[: len(opening)]) == opening and tuple(plain[: len(opening)]) != opening
    assert pulled == plain  # off the opening from the first token: nothing changes


class _Faulty:
    """A grammar whose matcher raises after `after` tokens, in `fill` (the mask) or `accept` (advancing)."""

    def __init__(self, grammar, where: str, after: int):
        self.grammar, self.where, self.after, self.vocabulary = grammar, where, after, grammar.vocabulary

    def new_matcher(self):
        matcher, where, after = self.grammar.new_matcher(), self.where, self.after
        fill, accept = matcher.fill_next_token_bitmask, matcher.accept_token

        def faulty_fill(bitmask, index=0, max_tokens=None):
            if where == "fill" and len(matcher._states) > after:
                raise RuntimeError("mask exploded")
            fill(bitmask, index, max_tokens)

        def faulty_accept(token):
            if where == "accept" and len(matcher._states) > after:
                raise RuntimeError("advance exploded")
            return accept(token)

        matcher.fill_next_token_bitmask, matcher.accept_token = faulty_fill, faulty_accept
        return matcher


@pytest.mark.parametrize("where", ["fill", "accept"])
def test_a_row_whose_grammar_raises_fails_alone(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, where) -> None:
    grammar = GrammarCompiler(smollm2_vocabulary).compile_regex("[a-z ]{1,200}")
    requests = [EngineRequest("bad", [1, 2, 3], GREEDY, max_tokens=30, grammar=_Faulty(grammar, where, 3))]
    requests += [EngineRequest(f"ok{i}", [1, 2, 3 + i], GREEDY, max_tokens=12, grammar=grammar) for i in range(4)]
    alone = {r.request_id: output_ids(run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer), [r])[r.request_id])
             for r in requests[1:]}
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, slots=5)
    results = run(engine, requests)
    assert results["bad"][-1].finish_reason == "error" and "exploded" in results["bad"][-1].error
    assert engine.stats.num_row_errors == 1
    for r in requests[1:]:  # the others finish, with exactly what they produce alone
        assert results[r.request_id][-1].finish_reason in ("stop", "length") and output_ids(results[r.request_id]) == alone[r.request_id]


def test_end_bias_moves_the_turn_toward_ending_after_a_complete_call(tiny_llama, smollm2_vocabulary, smollm2_tokenizer) -> None:
    """A large end bias ends every turn at its first complete call; a negative one keeps turns calling."""
    turn = ToolGrammarCompiler(GrammarCompiler(smollm2_vocabulary), GENERIC).compile_turn(specs(TOOLS), "required")

    def calls_per_turn(end_bias: float) -> list[int]:
        requests = [EngineRequest(f"r{seed}", prompts(smollm2_tokenizer)[seed % 3], SamplingParams(temperature=1.0, seed=seed),
                                  max_tokens=160, grammar=turn, end_bias=end_bias) for seed in range(6)]
        results = run(make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer), requests)
        counts = []
        for events in results.values():
            _, calls = GENERIC.parse_tool_calls(text(events))
            for call in calls:
                jsonschema.validate(call.arguments, SCHEMAS[call.name])
            counts.append(len(calls))
        return counts

    assert calls_per_turn(100.0) == [1] * 6
    assert max(calls_per_turn(-100.0)) > 1


def test_an_idle_step_runs_no_forward_and_logs_nothing(tiny_llama, smollm2_vocabulary, smollm2_tokenizer, caplog) -> None:
    """The engine thread steps every 0.5 s while idle: no forward of zero rows (which the native forward refuses)."""
    engine = make_engine(tiny_llama, smollm2_vocabulary, smollm2_tokenizer)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            engine.step()
    assert engine.stats.num_steps == 3 and engine.stats.num_forward_tokens == 0 and engine.stats.forward_seconds == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
