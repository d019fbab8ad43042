"""Tool-call grammars: every finished turn parses into calls that name an offered tool and validate.

The harshest model is a random one: at every step a random allowed token (with a pull toward the end once
the walk is long, so turns finish). Whatever it picks, the turn must parse and validate, in every format x
tool_choice x parallel setting, across the BFCL tool sets.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from strictcall.grammars.compiler import CompilerLimits, GrammarCompiler
from strictcall.grammars.errors import TurnError
from strictcall.grammars.formats import FORMATS, GENERIC, HERMES, ToolCall, detect_format
from strictcall.grammars.json_schema import UnsupportedSchemaError
from strictcall.grammars.masks import unpack_token_bitmask
from strictcall.grammars.tools import AnswerSpec, ToolChoice, ToolGrammarCompiler, ToolSpec
from strictcall.grammars.turn_matcher import TurnMatcher
from strictcall.grammars.vocabulary import Vocabulary

MODES = ["auto", "required", "named"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}


def specs(tools: list[dict]) -> list[ToolSpec]:
    """OpenAI tools (as the data holds them) as the grammars' specs."""
    return [ToolSpec(t["function"]["name"], t["function"].get("parameters", {"type": "object", "properties": {}}), t["function"].get("strict") is True)
            for t in tools]


def choice_of(value) -> ToolChoice | str:
    return ToolChoice.named(value["function"]["name"]) if isinstance(value, dict) else value


def bfcl_tool_sets(data_dir: Path, limit: int) -> list[list[dict]]:
    sets = []
    for name in ("simple.jsonl", "multiple.jsonl"):
        with open(data_dir / "bfcl" / name) as f:
            sets += [json.loads(line)["tools"] for line in f]
    rng = random.Random(0)
    rng.shuffle(sets)
    return [s for s in sets if s][:limit]


@pytest.fixture(scope="module")
def vocabulary(smollm2_tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(smollm2_tokenizer, text_special_tokens=["[TOOL_CALLS]"])


@pytest.fixture(scope="module")
def compilers(vocabulary: Vocabulary) -> dict[str, ToolGrammarCompiler]:
    grammar_compiler = GrammarCompiler(vocabulary)
    return {name: ToolGrammarCompiler(grammar_compiler, fmt) for name, fmt in FORMATS.items()}


def accept(matcher: TurnMatcher, vocabulary: Vocabulary, token: int, text: bytearray) -> bool:
    if not matcher.accept_token(token):
        return False
    text += vocabulary.token_bytes[token] or b""
    return True


def random_turn(matcher: TurnMatcher, vocabulary: Vocabulary, rng: np.random.Generator, text: bytearray, max_steps: int = 400) -> bool:
    """Random allowed tokens until end of turn; after 60 steps, the best of 12 random candidates by distance to the end.

    Returns whether the turn ended (False: cut short at `max_steps`).
    """
    eos = set(vocabulary.eos_token_ids)
    for step in range(max_steps):
        allowed = unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size)
        assert len(allowed) > 0, "a live turn always allows some token"
        if step < 60:
            token = int(rng.choice(allowed))
        else:
            candidates = set(rng.choice(allowed, size=min(12, len(allowed))).tolist()) | (eos & set(allowed.tolist()))
            scores = []
            for candidate in sorted(candidates):
                assert matcher.accept_token(candidate)
                scores.append((matcher.min_bytes_to_end(), candidate))
                matcher.rollback(1)
            token = min(scores)[1]
        assert accept(matcher, vocabulary, token, text)
        if token in eos:
            return True
    return False


def check_turn(text: str, fmt, tools: list[dict], mode: str, parallel: bool, named: str | None) -> list[ToolCall]:
    content, calls = fmt.parse_tool_calls(text)
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    if mode != "auto":
        assert content == "" and len(calls) >= 1
    if named is not None:
        assert [c.name for c in calls] == [named]
    if not parallel:
        assert len(calls) <= 1
    for call in calls:
        assert call.name in schemas
        jsonschema.validate(call.arguments, schemas[call.name], format_checker=jsonschema.FormatChecker())
    return calls


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("parallel", [True, False])
def test_random_turns_parse_and_validate(compilers, vocabulary: Vocabulary, smollm2_tokenizer, data_dir: Path, format_name: str, mode: str,
                                         parallel: bool) -> None:
    fmt = FORMATS[format_name]
    rng = np.random.default_rng(sorted(FORMATS).index(format_name) * 100 + MODES.index(mode) * 10 + parallel)
    num_finished = num_calls = 0
    for tools in bfcl_tool_sets(data_dir, 6) + [[WEATHER, TIME]]:
        named = tools[int(rng.integers(len(tools)))]["function"]["name"] if mode == "named" else None
        choice = {"type": "function", "function": {"name": named}} if named else mode
        matcher = TurnMatcher(compilers[format_name].compile_turn(specs(tools), choice_of(choice), parallel))
        text = bytearray()
        if mode == "auto":
            # Free text, then the trigger: random text alone would almost never call a tool.
            for token in smollm2_tokenizer.encode("Let me check that. ", add_special_tokens=False):
                assert accept(matcher, vocabulary, token, text)
            for token in smollm2_tokenizer.encode(fmt.trigger, add_special_tokens=False):
                assert accept(matcher, vocabulary, token, text)
            assert matcher.in_tool_call()
        if not random_turn(matcher, vocabulary, rng, text):
            assert matcher.min_bytes_to_end() >= 0
            continue
        num_finished += 1
        num_calls += len(check_turn(text.decode("utf-8"), fmt, tools, mode, parallel, named))
    assert num_finished >= 5 and num_calls >= num_finished


@pytest.fixture(scope="module")
def tokenizer_with_call_tokens(smollm2_tokenizer):
    """SmolLM2's tokenizer plus the call markers as single tokens, as Qwen's, Llama 3's and Mistral's have."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    return tokenizer


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("mode", MODES)
def test_reference_calls_through_the_real_tokenizer_are_accepted(tokenizer_with_call_tokens, format_name: str, mode: str) -> None:
    fmt = FORMATS[format_name]
    vocabulary = Vocabulary.from_tokenizer(tokenizer_with_call_tokens, text_special_tokens=fmt.special_tokens)
    compiler = ToolGrammarCompiler(GrammarCompiler(vocabulary), fmt)
    calls = [ToolCall("get_weather", {"city": "東京", "unit": "celsius"}), ToolCall("get_time", {})]
    if mode == "named":
        calls = calls[:1]
    choice = {"type": "function", "function": {"name": "get_weather"}} if mode == "named" else mode
    text = ("I will look that up." if mode == "auto" else "") + fmt.render_calls(calls)
    ids = tokenizer_with_call_tokens.encode(text, add_special_tokens=False)
    if fmt.special_tokens or format_name in ("hermes", "generic"):
        marker = fmt.special_tokens[0] if fmt.special_tokens else "<tool_call>"
        assert tokenizer_with_call_tokens.convert_tokens_to_ids(marker) in ids  # one token, not spelled out
    matcher = TurnMatcher(compiler.compile_turn(specs([WEATHER, TIME]), choice_of(choice)))
    for token in ids:
        mask = matcher.next_token_bitmask()
        assert (mask[token // 32] >> (token % 32)) & 1, tokenizer_with_call_tokens.decode([token])
        assert matcher.accept_token(token), tokenizer_with_call_tokens.decode([token])
    assert matcher.accept_token(vocabulary.eos_token_ids[0])
    content, parsed = fmt.parse_tool_calls(text)
    assert parsed == calls and content == ("I will look that up." if mode == "auto" else "")


def test_text_that_resembles_the_trigger_stays_text(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    matcher = TurnMatcher(compilers["hermes"].compile_turn(specs([WEATHER]), "auto"))
    for token in smollm2_tokenizer.encode("Use <tool_cal> or <tool_call!", add_special_tokens=False):
        assert matcher.accept_token(token)
    assert not matcher.in_tool_call() and matcher.is_accepting()
    for token in smollm2_tokenizer.encode(" <tool_call>", add_special_tokens=False):
        assert matcher.accept_token(token)
    assert matcher.in_tool_call() and not matcher.is_accepting()
    assert matcher.forced_bytes() == b'\n{"name": "get_weather", "arguments": {"city": "'


def test_tokens_completing_the_trigger_and_entering_the_call_are_allowed(tokenizer_with_call_tokens) -> None:
    vocabulary = Vocabulary.from_tokenizer(tokenizer_with_call_tokens)
    turn = ToolGrammarCompiler(GrammarCompiler(vocabulary), HERMES).compile_turn(specs([WEATHER]), "auto")
    matcher = TurnMatcher(turn)
    allowed = set(unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size).tolist())
    assert tokenizer_with_call_tokens.convert_tokens_to_ids("<tool_call>") in allowed
    # "<tool_call>" followed by a token that cannot start a call is refused right there.
    assert matcher.accept_token(tokenizer_with_call_tokens.convert_tokens_to_ids("<tool_call>"))
    assert not matcher.accept_token(tokenizer_with_call_tokens.encode("hello", add_special_tokens=False)[0])


def test_one_call_only_without_parallel_calls(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    turn = compilers["generic"].compile_turn(specs([WEATHER, TIME]), "required", parallel_tool_calls=False)
    matcher = TurnMatcher(turn)
    for token in smollm2_tokenizer.encode(GENERIC.render_calls([ToolCall("get_time", {})]), add_special_tokens=False):
        assert matcher.accept_token(token)
    allowed = unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size)
    assert set(allowed.tolist()) == set(vocabulary.eos_token_ids)


def test_mistral_needs_its_suffix_before_the_end(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    matcher = TurnMatcher(compilers["mistral"].compile_turn(specs([TIME]), "required"))
    for token in smollm2_tokenizer.encode('[TOOL_CALLS][{"name": "get_time", "arguments": {}}', add_special_tokens=False):
        assert matcher.accept_token(token)
    assert not matcher.is_accepting()
    assert not matcher.accept_token(vocabulary.eos_token_ids[0])
    assert matcher.accept_bytes(b"]") and matcher.is_accepting()


def test_response_format_with_tools_keeps_calls_possible(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    answer = AnswerSpec({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
    turn = compilers["hermes"].compile_turn(specs([WEATHER]), "auto", answer=answer)
    for text in ['{"x": 12}', HERMES.render_calls([ToolCall("get_weather", {"city": "Oslo"})])]:
        matcher = TurnMatcher(turn)
        for token in smollm2_tokenizer.encode(text, add_special_tokens=False):
            assert matcher.accept_token(token), text
        assert matcher.accept_token(vocabulary.eos_token_ids[0])
    matcher = TurnMatcher(turn)
    assert not matcher.accept_token(smollm2_tokenizer.encode("Hello", add_special_tokens=False)[0])


@pytest.mark.parametrize(
    "tools, choice, part, index",
    [
        ([WEATHER], ToolChoice.named("nope"), "tool_choice", None),
        ([], "required", "tool_choice", None),
        ([WEATHER], "sometimes", "tool_choice", None),
        ([WEATHER, WEATHER], "auto", "tools", 1),
        ([{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "array", "uniqueItems": True}}}], "auto", "tools", 0),
    ],
    ids=["named missing", "required without tools", "unknown mode", "name twice", "strict schema not enforceable"],
)
def test_bad_turns_say_which_input(compilers, tools, choice, part: str, index: int | None) -> None:
    with pytest.raises(TurnError) as error:
        compilers["hermes"].compile_turn(specs(tools), choice)
    assert (error.value.part, error.value.index) == (part, index)


def test_a_schema_that_cannot_be_enforced_keeps_its_cause(compilers) -> None:
    tool = ToolSpec("f", {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}, strict=True)
    with pytest.raises(TurnError) as error:
        compilers["hermes"].compile_turn([tool], "auto")
    cause = error.value.cause
    assert isinstance(cause, UnsupportedSchemaError) and (cause.pointer, cause.keyword) == ("/properties/tags", "uniqueItems")
    non_strict = compilers["hermes"].compile_turn([ToolSpec("f", tool.parameters)], "auto")
    assert non_strict.unenforced == (("tools", 0, "/properties/tags", "uniqueItems"),)


def test_turns_and_tool_grammars_are_cached(vocabulary: Vocabulary) -> None:
    grammar_compiler = GrammarCompiler(vocabulary)
    compiler = ToolGrammarCompiler(grammar_compiler, HERMES)
    turn = compiler.compile_turn(specs([WEATHER, TIME]), "auto")
    assert compiler.compile_turn(specs([WEATHER, TIME]), "auto") is turn
    misses = grammar_compiler.num_cache_misses
    other = compiler.compile_turn(specs([TIME, WEATHER]), "required")  # same tools, another turn: no new tool grammar
    assert other is not turn and grammar_compiler.num_cache_misses == misses


@pytest.mark.parametrize(
    "template, expected",
    [
        (None, "generic"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "generic"),
        ("{% if tools %}<tool_call>{% endif %}", "hermes"),
        ("{% if tools %}[TOOL_CALLS]{% endif %}", "mistral"),
        ("{% if tools %}<|start_header_id|>ipython{% endif %}", "llama3_json"),
    ],
)
def test_format_is_detected_from_the_chat_template(template, expected: str) -> None:
    assert detect_format(template).name == expected


def test_logits_processor_constrains_generate_on_a_random_model(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from strictcall.grammars.logits_processor import ConstrainedLogitsProcessor

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocabulary.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    turn = compilers["generic"].compile_turn(specs([WEATHER, TIME]), "required", parallel_tool_calls=False)
    matchers = [TurnMatcher(turn), TurnMatcher(turn)]
    prompt = torch.tensor([smollm2_tokenizer.encode("What is the weather?")] * 2)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=120, do_sample=True, top_k=0,
                             logits_processor=[ConstrainedLogitsProcessor(matchers, vocabulary.vocab_size)],
                             eos_token_id=list(vocabulary.eos_token_ids), pad_token_id=vocabulary.eos_token_ids[0])
    for row, matcher in zip(out[:, prompt.shape[1]:].tolist(), matchers):
        text = vocabulary.bytes_of(row).decode("utf-8", errors="replace")
        if matcher.is_terminated():
            check_turn(text, GENERIC, [WEATHER, TIME], "required", False, None)
        else:  # cut by max_new_tokens: a prefix the grammar still allows
            assert text.startswith("<tool_call>")


def test_a_trailing_newline_may_end_the_turn(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    # SmolLM2 writes a newline after </tool_call> and then stops; that newline must not force another call.
    matcher = TurnMatcher(compilers["generic"].compile_turn(specs([WEATHER, TIME]), "required"))
    for token in smollm2_tokenizer.encode(GENERIC.render_calls([ToolCall("get_time", {})]) + "\n", add_special_tokens=False):
        assert matcher.accept_token(token)
    assert matcher.is_accepting()
    assert matcher.accept_token(vocabulary.eos_token_ids[0])
    text = GENERIC.render_calls([ToolCall("get_time", {})]) + "\n"
    assert GENERIC.parse_tool_calls(text)[1] == [ToolCall("get_time", {})]


def test_every_bfcl_tool_set_gives_valid_turns(compilers, vocabulary: Vocabulary, smollm2_tokenizer, data_dir: Path) -> None:
    """One random turn per BFCL tool set (all of them), cycling through format x tool_choice x parallel."""
    combos = [(f, m, p) for f in sorted(FORMATS) for m in ("required", "named") for p in (True, False)]
    num_finished = 0
    for i, tools in enumerate(bfcl_tool_sets(data_dir, 10_000)):
        format_name, mode, parallel = combos[i % len(combos)]
        rng = np.random.default_rng(1000 + i)
        named = tools[int(rng.integers(len(tools)))]["function"]["name"] if mode == "named" else None
        choice = {"type": "function", "function": {"name": named}} if named else mode
        matcher = TurnMatcher(compilers[format_name].compile_turn(specs(tools), choice_of(choice), parallel))
        text = bytearray()
        if random_turn(matcher, vocabulary, rng, text, max_steps=250):
            check_turn(text.decode("utf-8"), FORMATS[format_name], tools, mode, parallel, named)
            num_finished += 1
    assert num_finished >= 120  # of the sample's 150 tool sets (130 finish within 250 steps)


def test_grammar_memory_stays_within_its_byte_budget(vocabulary: Vocabulary, data_dir: Path) -> None:
    """Never-seen tool sets one after another, their masks computed as a generation would: the bytes held by cached
    grammars and turns stay under the budget (least recently used dropped), and dropped ones are freed."""
    import gc
    import weakref

    limit = 24 << 20
    compiler = ToolGrammarCompiler(GrammarCompiler(vocabulary, CompilerLimits(max_cache_bytes=limit)), HERMES)
    budget = compiler.compiler.budget
    rng = np.random.default_rng(5)
    first_turn = None
    peak = 0
    for round_ in range(2):
        for i, tools in enumerate(bfcl_tool_sets(data_dir, 10_000)):
            renamed = [ToolSpec(f"{spec.name}_{round_}_{i}", spec.parameters) for spec in specs(tools)]  # never seen before
            turn = compiler.compile_turn(renamed, "required")
            first_turn = first_turn or weakref.ref(turn)
            random_turn(turn.new_matcher(), vocabulary, rng, bytearray(), max_steps=12)
            peak = max(peak, budget.num_bytes)
    # Over the limit by at most what one grammar or turn adds between two trims (a few masks: 6 KB each).
    assert limit // 2 < peak <= limit + (1 << 20), (peak, limit)
    gc.collect()
    assert first_turn() is None  # evicted long ago, and freed
    assert budget.num_bytes <= limit


# ----- a turn ends complete within its budget, and never repeats a call -----

def budget_walk(matcher, vocabulary: Vocabulary, rng: np.random.Generator, max_tokens: int) -> tuple[bytes, bool]:
    """Random tokens under the budget-aware mask, as the engine runs a row: (text, ended complete)."""
    text = bytearray()
    eos = set(vocabulary.eos_token_ids)
    for used in range(max_tokens):
        allowed = unpack_token_bitmask(matcher.next_token_bitmask(max_tokens - used), vocabulary.vocab_size)
        assert len(allowed), "a live turn always allows some token"
        token = int(rng.choice(allowed))
        assert matcher.accept_token(token)
        if token in eos:
            return bytes(text), True
        text += vocabulary.token_bytes[token]
        if matcher.is_only_end_allowed():
            return bytes(text), True
    return bytes(text), matcher.is_accepting()


@pytest.mark.parametrize("mode", ["required", "named", "auto"])
def test_every_turn_that_can_end_within_its_budget_does(compilers, vocabulary: Vocabulary, data_dir: Path, mode: str) -> None:
    """With random tokens (the harshest model), for budgets around each BFCL tool set's shortest ending: a turn whose
    shortest ending (in bytes: every byte is a token) fits its budget ends complete and valid; the others end as a
    prefix the grammar accepted (every token was accepted on the way)."""
    rng = np.random.default_rng(["required", "named", "auto"].index(mode))
    num_complete = num_cut = 0
    for tools in bfcl_tool_sets(data_dir, 40):
        named = tools[int(rng.integers(len(tools)))]["function"]["name"] if mode == "named" else None
        turn = compilers["generic"].compile_turn(specs(tools), ToolChoice.named(named) if named else mode)
        for extra in (-3, 0, 8, 40):
            matcher = turn.new_matcher()
            if mode == "auto":  # into the call: free text alone could end at once
                assert matcher.accept_bytes(b"<tool_call>")
            max_tokens = matcher.min_bytes_to_end() + extra
            text, complete = budget_walk(matcher, vocabulary, rng, max_tokens)
            if extra >= 0:
                assert complete, (tools[0]["function"]["name"], max_tokens, text[-80:])
                prefix = "<tool_call>" if mode == "auto" else ""
                assert check_turn(prefix + text.decode("utf-8"), GENERIC, tools, "required" if mode == "auto" else mode, True, named)
                num_complete += 1
            else:
                num_cut += 1
    assert (num_complete, num_cut) == (120, 40)


def test_an_identical_call_cannot_be_completed_twice(compilers, vocabulary: Vocabulary, smollm2_tokenizer) -> None:
    turn = compilers["generic"].compile_turn(specs([WEATHER, TIME]), "required")
    first = GENERIC.render_calls([ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})])
    matcher = turn.new_matcher()
    assert matcher.accept_bytes(first.encode())
    head = '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "'
    for byte in head.encode():  # the second call, up to its last choice: the unit
        assert matcher.accept_bytes(bytes([byte]))
    c, f = (smollm2_tokenizer.convert_tokens_to_ids(t) for t in ("c", "f"))
    mask = matcher.next_token_bitmask()
    assert not (mask[c // 32] >> (c % 32)) & 1 and not matcher.accept_token(c)  # `c` forces "elsius": the same call again
    assert (mask[f // 32] >> (f % 32)) & 1 and matcher.accept_token(f)  # fahrenheit is another call
    assert matcher.accept_bytes(b'ahrenheit"}}\n</tool_call>') and matcher.is_accepting()
    free = compilers["generic"].compile_turn(specs([WEATHER, TIME]), "required", distinct_calls=False).new_matcher()
    assert free.accept_bytes((first + "\n" + first).encode()) and free.is_accepting()  # the opt-out


def test_a_call_forced_in_full_cannot_start_again(compilers, vocabulary: Vocabulary) -> None:
    """A tool without parameters: after its call, the separator can only end the turn (the next call would repeat it)."""
    none = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    matcher = compilers["generic"].compile_turn(specs([none]), "required").new_matcher()
    assert matcher.accept_bytes(GENERIC.render_calls([ToolCall("get_time", {})]).encode() + b"\n")
    allowed = set(unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size).tolist())
    assert allowed == set(vocabulary.eos_token_ids)


def test_where_the_budget_leaves_only_a_repeat_the_mask_still_allows_it(compilers, vocabulary: Vocabulary) -> None:
    """A second call whose only ending within the tokens left repeats the first: the mask is then the repeat's tokens,
    never empty (an empty mask failed BFCL multiple_125), and accept_token agrees with it; with room, the repeat is
    refused again."""
    zone = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"enum": ["UTC", "Europe/Amsterdam"]}}, "required": ["zone"]}}}
    matcher = compilers["generic"].compile_turn(specs([zone]), "required").new_matcher()
    call = GENERIC.render_calls([ToolCall("get_time", {"zone": "UTC"})])
    assert matcher.accept_bytes(call.encode() + b'\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "')
    rest = b'UTC"}}\n</tool_call>'
    allowed = unpack_token_bitmask(matcher.next_token_bitmask(len(rest) + 1), vocabulary.vocab_size)
    assert len(allowed) and all(rest.startswith(vocabulary.token_bytes[t]) for t in allowed)
    roomy = unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size)
    assert len(roomy) and all(b"Europe/Amsterdam".startswith(vocabulary.token_bytes[t]) for t in roomy)
    bitmask = np.zeros((1, vocabulary.num_words), dtype=np.int32)
    matcher.fill_next_token_bitmask(bitmask, 0, len(rest) + 1)
    assert matcher.accept_token(int(allowed[0]))
