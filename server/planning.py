"""A validated request -> a `Plan`: the engine requests (prompt, budget, sampling, grammar) and how to read their
output (`OutputSpec`, taken from the compiled turn).

Invariant: nothing reaches the engine before every check a request can fail has passed (fields, prompt,
context, limits, grammars compiled); a turn's facts (tools offered, choice, parallel calls, answer format) are
derived once, here, into the grammars' typed specs; and every error names the request field it came from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from strictcall.grammars import (
    AnswerSpec,
    CompileCancelledError,
    CompiledGrammar,
    Grammar,
    GrammarError,
    InvalidSchemaError,
    ToolChoice,
    ToolSpec,
    TurnError,
    TurnGrammar,
    Unenforced,
    check_schema,
    escape,
    turn_key,
)
from strictcall.kernels import SamplingParams
from strictcall.server.compile_pool import CompileTimeoutError
from strictcall.server.config import DEFAULT_MAX_TOKENS, ServerConfig
from strictcall.server.errors import APIError, api_error, bad_request
from strictcall.server.metrics import ServerMetrics
from strictcall.server.prompt import encode_prompt, render_prompt
from strictcall.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationFields,
    GuidedSpec,
    StrictcallOptions,
    answer_spec,
    guided_spec,
    random_id,
    tool_choice,
    tool_specs,
)
from strictcall.server.sequence import EngineRequest
from strictcall.server.serving import ServingState

T = TypeVar("T")


@dataclass(frozen=True)
class OutputSpec:
    """How a chat choice's text is read back: whether it may hold calls, which tools, and whether a grammar
    wrote it (calls stream as they come) or not (they are parsed leniently at the end)."""

    parse_tools: bool
    constrained: bool
    tool_names: frozenset[str] | None


@dataclass
class Plan:
    """The engine requests of one HTTP request (one per choice and prompt), and what rendering them needs."""

    requests: list[EngineRequest]
    output: OutputSpec
    logprobs: bool
    num_prompt_tokens: int  # each distinct prompt counted once, as OpenAI counts n > 1
    prompt_texts: list[str]  # completions' `echo`
    echo: bool = False
    # (request field, JSON pointer, keyword) of each non-strict schema keyword the grammar does not enforce.
    unenforced: tuple[tuple[str, str, str], ...] = ()


async def plan_chat(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, req: ChatCompletionRequest) -> Plan:
    """A chat completion request -> its plan (prompt rendered, turn compiled)."""
    _check_common(req, config)
    _check_chat_fields(req)
    tools = tool_specs(req.tools, all_strict=config.strict_tools)
    if len(tools) > config.max_tools:
        raise bad_request(f"{len(tools)} tools were given; this server takes at most {config.max_tools} (--max-tools)", "tools", "too_many_tools")
    for i, tool in enumerate(tools):
        _check_schema(tool.parameters, f"tools[{i}].function.parameters", config)
    names = [tool.name for tool in tools]
    choice = tool_choice(req.tool_choice, names)
    answer = answer_spec(req.response_format)
    if answer is not None:
        _check_schema(answer.schema, "response_format.json_schema.schema", config)
    guided = guided_spec(req)
    if guided and tools and choice.mode != "none":
        raise bad_request(f"{guided.param} constrains the whole answer, so it cannot be combined with tool calls; set tool_choice to 'none' "
                          "or drop it", guided.param, "conflicting_parameters")
    options = req.strictcall or StrictcallOptions()

    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    openai_tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    try:
        prompt = render_prompt(serving.tokenizer, serving.format, messages, openai_tools, choice.mode)
        prompt_ids = encode_prompt(serving.tokenizer, prompt)
    except Exception as error:
        raise api_error(error) from None
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    default = config.default_max_tokens or int(serving.sampling_defaults.get("max_tokens", DEFAULT_MAX_TOKENS))
    max_tokens = _max_tokens(requested, len(prompt_ids), serving.max_model_len, param, "messages", default)
    bias = _logit_bias(req, serving.vocabulary.vocab_size)

    grammar: Grammar | None = None
    unenforced: tuple[tuple[str, str, str], ...] = ()
    if options.constrained and guided:
        grammar = await _guided_grammar(serving, config, metrics, guided)
    elif options.constrained and (tools or answer):
        parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
        turn = await _compile_turn(serving, metrics, config, tools, choice, parallel, answer, not options.allow_repeated_calls)
        grammar = None if turn.is_unconstrained else turn
        unenforced = _unenforced_params(turn.unenforced)
    parse_tools = bool(tools) and choice.mode != "none" and guided is None
    output = OutputSpec(parse_tools, options.constrained, frozenset(names) if parse_tools else None)
    top = req.top_logprobs or 0
    auto_tool_bias = options.auto_tool_bias if options.auto_tool_bias is not None else (
        config.auto_tool_bias if config.auto_tool_bias is not None else serving.profile.auto_tool_bias)
    end_bias = options.end_bias if options.end_bias is not None else serving.profile.end_bias
    end_bias = end_bias if tools and choice.mode in ("auto", "required") and guided is None else 0.0
    # The bias is for the decision to act on a user's request; after a tool result the model should answer from it
    # (biased there, SmolLM2 calls the same tool again).
    answers_user = messages[-1]["role"] == "user"
    opening = serving.call_opening if tools and choice.mode == "auto" and guided is None and answers_user else ()
    requests = [
        EngineRequest(random_id("req-", 16), prompt_ids, _sampling(req, i, bool(req.logprobs), top, serving.sampling_defaults),
                      max_tokens=max_tokens, min_tokens=_min_tokens(req, max_tokens), logit_bias=bias, call_opening=opening,
                      call_opening_bias=auto_tool_bias, stop=_stops(req), grammar=grammar, jump_forward=options.jump_forward,
                      close_within_budget=options.close_within_budget, end_bias=end_bias)
        for i in range(req.n)
    ]
    return Plan(requests, output, bool(req.logprobs), len(prompt_ids), [prompt.text], unenforced=unenforced)


async def plan_completion(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, req: CompletionRequest) -> Plan:
    """A (legacy) completion request -> its plan: one engine request per prompt and choice."""
    _check_common(req, config)
    if req.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", "suffix", "unsupported_parameter")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of is not supported (it must equal n)", "best_of", "unsupported_parameter")
    prompts = _prompts(req)
    if len(prompts) * req.n > config.max_n:
        raise bad_request(f"{len(prompts)} prompts x n={req.n} choices is more than this server allows ({config.max_n}, --max-n)", "n")
    vocab_size = serving.vocabulary.vocab_size
    ids_list, texts = [], []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            ids, text = serving.tokenizer.encode(prompt, add_special_tokens=True), prompt
        else:
            if any(not 0 <= t < vocab_size for t in prompt):
                raise bad_request(f"{param}: token ids must be in [0, {vocab_size})", param)
            ids, text = list(prompt), serving.tokenizer.decode(prompt)
        if not ids:
            raise bad_request(f"{param} is empty", param)
        ids_list.append(ids)
        texts.append(text)
    max_tokens = [_max_tokens(req.max_tokens, len(ids), serving.max_model_len, "max_tokens", "prompt") for ids in ids_list]
    bias = _logit_bias(req, vocab_size)
    guided = guided_spec(req)
    answer = answer_spec(req.response_format)
    options = req.strictcall or StrictcallOptions()
    grammar: Grammar | None = None
    unenforced: tuple[tuple[str, str, str], ...] = ()
    if options.constrained and guided:
        grammar = await _guided_grammar(serving, config, metrics, guided)
    elif options.constrained and answer is not None:
        _check_schema(answer.schema, "response_format.json_schema.schema", config)
        turn = await _compile_turn(serving, metrics, config, [], ToolChoice("none"), True, answer)
        grammar, unenforced = turn, _unenforced_params(turn.unenforced)
    top = req.logprobs or 0
    requests: list[EngineRequest] = []
    prompt_texts: list[str] = []
    for ids, text, budget in zip(ids_list, texts, max_tokens):
        for _ in range(req.n):
            requests.append(EngineRequest(random_id("req-", 16), ids, _sampling(req, len(requests), req.logprobs is not None, top,
                                                                                 serving.sampling_defaults),
                                          max_tokens=budget, min_tokens=_min_tokens(req, budget), logit_bias=bias, stop=_stops(req),
                                          grammar=grammar, jump_forward=options.jump_forward, close_within_budget=options.close_within_budget))
            prompt_texts.append(text)
    return Plan(requests, OutputSpec(False, options.constrained, None), req.logprobs is not None, sum(len(ids) for ids in ids_list), prompt_texts,
                bool(req.echo), unenforced)


# ----- checks -----


def _check_common(req: GenerationFields, config: ServerConfig) -> None:
    if req.n > config.max_n:
        raise bad_request(f"n={req.n} is more than this server allows ({config.max_n}, --max-n)", "n")
    if req.repetition_penalty not in (None, 1.0):
        raise bad_request("repetition_penalty is not supported; use presence_penalty or frequency_penalty", "repetition_penalty", "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    stops = _stops(req)
    if len(stops) > 16:
        raise bad_request(f"stop takes at most 16 strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", "stop")


def _check_chat_fields(req: ChatCompletionRequest) -> None:
    if req.functions is not None or req.function_call is not None:
        name = "functions" if req.functions is not None else "function_call"
        raise bad_request(f"{name} is deprecated and not supported here; use tools and tool_choice", name, "unsupported_parameter")
    if req.audio is not None or (req.modalities and any(m != "text" for m in req.modalities)):
        raise bad_request("this server generates text only", "modalities" if req.modalities else "audio", "unsupported_parameter")
    if req.web_search_options is not None:
        raise bad_request("web search is not available on this server", "web_search_options", "unsupported_parameter")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    call_ids: set[str] = set()
    for i, message in enumerate(req.messages):
        call_ids |= {call.id for call in message.tool_calls or [] if call.id}
        if message.role == "tool" and not message.tool_call_id:
            raise bad_request(f"messages[{i}]: a tool message needs tool_call_id", f"messages[{i}].tool_call_id", "missing_required_parameter")
        if message.role == "tool" and message.tool_call_id not in call_ids:
            raise bad_request(f"messages[{i}]: tool_call_id {message.tool_call_id!r} answers no tool call of an earlier assistant message",
                              f"messages[{i}].tool_call_id")
        if message.role in ("system", "developer", "user") and message.content is None:
            raise bad_request(f"messages[{i}]: a {message.role} message needs content", f"messages[{i}].content", "missing_required_parameter")
        if message.role == "assistant" and message.content is None and not message.tool_calls:
            raise bad_request(f"messages[{i}]: an assistant message needs content or tool_calls", f"messages[{i}].content",
                              "missing_required_parameter")


def _check_schema(schema: Any, param: str, config: ServerConfig) -> None:
    """Within --max-schema-bytes, and a JSON Schema at all (before the tool prompt or a grammar reads it)."""
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > config.max_schema_bytes:
        raise bad_request(f"{param}: the schema has {size} bytes; this server compiles at most {config.max_schema_bytes} (--max-schema-bytes)",
                          param, "schema_too_large")
    try:
        check_schema(schema)
    except InvalidSchemaError as error:
        raise bad_request(f"{param}: {error}", param) from None


def _prompts(req: CompletionRequest) -> list[str | list[int]]:
    if isinstance(req.prompt, str):
        return [req.prompt]
    if not req.prompt:
        raise bad_request("prompt must not be empty", "prompt")
    if isinstance(req.prompt[0], int):
        return [[int(t) for t in req.prompt]]
    return [p if isinstance(p, str) else [int(t) for t in p] for p in req.prompt]


# ----- budget and sampling -----


def _stops(req: GenerationFields) -> tuple[str, ...]:
    return (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())


def _logit_bias(req: GenerationFields, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias`: token id (as a string) -> -100..100, added to the logit (the grammar still decides)."""
    bias = []
    for key, value in (req.logit_bias or {}).items():
        if not key.strip().lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise bad_request(f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}", "logit_bias")
        if not -100 <= value <= 100:
            raise bad_request(f"logit_bias values must be between -100 and 100, got {value} for token {key}", "logit_bias")
        bias.append((int(key), float(value)))
    return tuple(bias)


def _min_tokens(req: GenerationFields, max_tokens: int) -> int:
    """vLLM's `min_tokens` and `ignore_eos`: end-of-sequence tokens are held back (free text only; a grammar's end
    still ends a constrained turn)."""
    if req.ignore_eos:
        return max_tokens
    if req.min_tokens is not None and req.min_tokens > max_tokens:
        raise bad_request(f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_tokens})", "min_tokens")
    return req.min_tokens or 0


def _sampling(req: GenerationFields, index: int, logprobs: bool, top_logprobs: int, defaults: dict[str, float]) -> SamplingParams:
    """The request's sampling; what it leaves unset comes from the model's defaults, else OpenAI's."""
    def given(value: float | None, name: str, openai_default: float) -> float:
        return value if value is not None else defaults.get(name, openai_default)

    top_k = given(req.top_k, "top_k", 0)
    try:
        return SamplingParams(
            temperature=given(req.temperature, "temperature", 1.0),
            top_p=given(req.top_p, "top_p", 1.0),
            top_k=0 if top_k == -1 else int(top_k),
            min_p=given(req.min_p, "min_p", 0.0),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            seed=None if req.seed is None else req.seed + index,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
    except ValueError as error:
        message = str(error)
        name = message.split("=", 1)[0].removeprefix("SamplingParams.") if message.startswith("SamplingParams.") else None
        raise bad_request(message.replace("SamplingParams.", ""), name) from None


def _max_tokens(requested: int | None, prompt_length: int, max_model_len: int, param: str, prompt_param: str, default: int | None = None) -> int:
    """The output budget: the request's (which must fit the context), else `default` capped by the context left."""
    room = max_model_len - prompt_length
    if room < 1:
        raise bad_request(f"the prompt has {prompt_length} tokens; this model's context is {max_model_len} tokens (--max-model-len), "
                          "and at least one must be left for the output. Shorten the prompt.", prompt_param, "context_length_exceeded")
    if requested is None:
        return room if default is None else min(room, default)
    if requested > room:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {prompt_length + requested} tokens "
            f"({prompt_length} in the prompt, {requested} for the completion). Reduce the prompt or {param}.", param, "context_length_exceeded")
    return requested


# ----- grammars -----


async def _compile(serving: ServingState, metrics: ServerMetrics, config: ServerConfig, cached: T | None, key: Hashable,
                   build: Callable[[], T], param: str) -> T:
    """The grammar: `cached` if compiled already, else `build` on the compile pool within the compile timeout."""
    if cached is not None:
        return cached
    started = time.perf_counter()
    try:
        return await serving.compile_pool.run(key, build, config.compile_timeout_s)
    except (CompileTimeoutError, CompileCancelledError):
        raise bad_request(
            f"compiling the grammar for {param} took longer than {config.compile_timeout_s:g} s (--compile-timeout-s) and was stopped; "
            "simplify the schema (fewer alternatives, smaller bounds, fewer $ref expansions)", param, "grammar_compile_timeout") from None
    finally:
        metrics.grammar_compile_time.observe(time.perf_counter() - started)


async def _compile_turn(serving: ServingState, metrics: ServerMetrics, config: ServerConfig, tools: list[ToolSpec], choice: ToolChoice,
                        parallel: bool, answer: AnswerSpec | None, distinct: bool = True) -> TurnGrammar:
    compiler = serving.grammars.tool_compiler
    try:
        cached = compiler.cached_turn(tools, choice, parallel, answer, distinct)
        return await _compile(serving, metrics, config, cached, ("turn", turn_key(tools, choice, parallel, answer, distinct)),
                              lambda: compiler.compile_turn(tools, choice, parallel, answer, distinct), "tools" if tools else "response_format")
    except TurnError as error:
        raise _turn_error(error, tools) from None


def _turn_error(error: TurnError, tools: list[Any]) -> APIError:
    """A turn that cannot be compiled, as a 400 on the request field it came from."""
    if error.part == "tools":
        param = f"tools[{error.index}].function." + ("parameters" if error.cause is not None else "name")
        message = str(error)
        if error.cause is not None and error.index is not None and tools[error.index].strict:
            message += (' (the tool is strict: it sets "strict": true, or the server runs with --strict-tools; every keyword must be '
                        'enforced then, while for a non-strict tool the rest is enforced and this keyword is reported)')
        return api_error(TurnError(message, error.part, error.index, error.cause), param)
    if error.part == "answer":
        return api_error(error, "response_format.json_schema.schema")
    return api_error(error, "tool_choice")


def _unenforced_params(unenforced: tuple[Unenforced, ...]) -> tuple[tuple[str, str, str], ...]:
    return tuple((f"tools[{index}].function.parameters" if part == "tools" else "response_format.json_schema.schema", pointer, keyword)
                 for part, index, pointer, keyword in unenforced)


async def _guided_grammar(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, spec: GuidedSpec) -> CompiledGrammar:
    compiler = serving.grammars.compiler
    if spec.kind == "json":
        _check_schema(spec.value, spec.param, config)
        cached, key = compiler.cached_json_schema(spec.value), ("json", json.dumps(spec.value, ensure_ascii=False))
        build: Callable[[], CompiledGrammar] = lambda: compiler.compile_json_schema(spec.value)  # noqa: E731
    else:
        if spec.kind == "regex" and len(spec.value.encode()) > config.max_schema_bytes:
            raise bad_request(f"{spec.param} is longer than {config.max_schema_bytes} bytes (--max-schema-bytes)", spec.param, "schema_too_large")
        regex = spec.value if spec.kind == "regex" else "(?:" + "|".join(escape(choice) for choice in spec.value) + ")"
        cached, key = compiler.cached_regex(regex), ("regex", regex)
        build = lambda: compiler.compile_regex(regex)  # noqa: E731
    try:
        return await _compile(serving, metrics, config, cached, key, build, spec.param)
    except GrammarError as error:
        error_api = api_error(error, spec.param)
        raise APIError(error_api.status, f"{spec.param}: {error_api.message}", param=spec.param, code=error_api.code) from None
