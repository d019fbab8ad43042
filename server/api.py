"""The OpenAI-compatible HTTP API: routes, request validation, OpenAI-shaped responses and errors, SSE.

Invariants: every error a client can cause is answered in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` with a 4xx status naming the field (never FastAPI's 422,
never a 500); a request never reaches the engine before its prompt, limits and grammars are checked; a
request whose client goes away is aborted in the engine; streamed and non-streamed answers come from the same
`OutputParser`, so they agree.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from strictcall.grammars.compiler import CompiledGrammar, GrammarCompiler
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.formats import ToolCallFormat, detect_format, get_format
from strictcall.grammars.regex import escape
from strictcall.grammars.tools import ToolChoice, ToolGrammarCompiler, ToolGrammarError, TurnGrammar
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.kernels import SamplingParams
from strictcall.server.chat import Delta, OutputParser, PromptError, random_id, render_prompt
from strictcall.server.config import DEFAULT_MAX_TOKENS, ServerConfig
from strictcall.server.engine import Engine, EngineConfig, EngineEvent, EngineOverloadedError, EngineRequest, TokenLogprob
from strictcall.server.metrics import ServerMetrics
from strictcall.server.model_loader import ModelSource, generation_defaults, load_model, resolve_dtype, resolve_device, resolve_model
from strictcall.server.model_profiles import GENERIC, ModelProfile, profile_for

logger = logging.getLogger("strictcall.server")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
STATS_INTERVAL_S = 10.0
# The logprob JSON cannot carry -inf (a token the grammar masked): this stands for it, as in vLLM.
_MASKED_LOGPROB = -9999.0


# ----- errors -----


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


_ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


def _bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ----- request models -----


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Ignore(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCallIn(_Ignore):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Ignore):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Ignore):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Forbid):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Forbid):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(_Ignore):
    include_usage: bool = False


class JsonSchemaFormat(_Ignore):
    name: str = "response"
    description: str | None = None
    schema_: Union[dict[str, Any], bool, None] = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Forbid):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Forbid):
    """vLLM's `structured_outputs` (and its older `guided_*` fields)."""

    json_: Union[dict[str, Any], str, bool, None] = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: Any = None
    disable_any_whitespace: bool | None = None
    disable_fallback: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None
    backend: str | None = None


class StrictcallOptions(_Forbid):
    """Our extension, `"strictcall": {...}` (the OpenAI SDK sends it through `extra_body`)."""

    constrained: bool = True
    jump_forward: bool | None = None
    auto_tool_bias: float | None = Field(default=None, ge=-100, le=100)


class _GenerationFields(_Forbid):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # vLLM extras
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    repetition_penalty: float | None = None
    guided_json: Union[dict[str, Any], str, bool, None] = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    structured_outputs: StructuredOutputs | None = None
    # ours
    strictcall: StrictcallOptions | None = None
    # accepted and ignored: they change nothing on this server
    user: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    request_id: Any = None
    priority: Any = None


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    functions: Any = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    chat_template_kwargs: Any = None


class CompletionRequest(_GenerationFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


# pydantic's tags for a union member's type in an error location: never one of our field names.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal", "json-or-python", "union"}


def _param_of(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if text in _TYPE_TAGS or any(c in text for c in "[]-'\"(") or text.startswith("function-"):
            continue  # a union member's tag, not a field
        out += ("." if out else "") + text
    return out


def _validation_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    loc = tuple(first.get("loc", ()))
    alias = {"schema_": "schema", "json_": "json"}
    loc = tuple(alias.get(p, p) if isinstance(p, str) else p for p in loc)
    param = _param_of(loc) or None
    if first.get("type") == "extra_forbidden":
        return _bad_request(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if first.get("type") == "missing":
        return _bad_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    given = first.get("input")
    shown = json.dumps(given, ensure_ascii=False, default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return _bad_request(f"Invalid value for '{param}': {first.get('msg')} (got {shown}).", param, "invalid_value")


# ----- the loaded model -----


@dataclass
class ServingState:
    """What serving needs once the model is loaded."""

    tokenizer: Any
    vocabulary: Vocabulary
    format: ToolCallFormat
    grammar_compiler: GrammarCompiler
    tool_compiler: ToolGrammarCompiler
    engine: Engine
    max_model_len: int
    profile: ModelProfile = GENERIC
    # Sampling (and `max_tokens`) for requests that leave them unset: the model's generation_config, else its profile.
    sampling_defaults: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def call_opening(self) -> tuple[int, ...]:
        """The format's trigger (`<tool_call>`) as the model's tokens: where `auto_tool_bias` applies."""
        return tuple(self.tokenizer.encode(self.format.trigger, add_special_tokens=False))


def load_serving_state(config: ServerConfig, source: ModelSource | None = None) -> ServingState:
    """Load the model, build the vocabulary, compilers and engine, start the engine and warm it up.

    Args:
        source: the model's files, if already resolved (the CLI checks them before the server starts).
    """
    from strictcall.server.model_loader import converted_gguf_dir, grammar_cache_dir
    from strictcall.server.model_runner import ModelRunner

    started = time.perf_counter()
    source = source or resolve_model(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    converting = source.is_gguf and not (converted_gguf_dir(source) / "config.json").exists()
    logger.info("loading model %s on %s (%s)%s", source.location, device, str(dtype).removeprefix("torch."),
                "; the first start converts the GGUF file once (~20 s)" if converting else "")
    model, tokenizer = load_model(source, device, dtype)
    fmt = get_format(config.tool_format) if config.tool_format else detect_format(getattr(tokenizer, "chat_template", None))
    logger.info("building the vocabulary and the engine (tool-call format: %s)", fmt.name)
    vocabulary = Vocabulary.from_tokenizer(tokenizer, vocab_size=model.config.vocab_size, text_special_tokens=fmt.special_tokens)
    compiler = GrammarCompiler(vocabulary, disk_cache=DiskCache(grammar_cache_dir()))
    runner = ModelRunner(model, config.max_batch_size, config.max_model_len)
    engine = Engine(runner, vocabulary, tokenizer, EngineConfig(prefill_chunk_tokens=config.prefill_chunk_tokens,
                                                                max_waiting=config.max_waiting, jump_forward=config.jump_forward))
    engine.start()
    profile = profile_for(source.is_default)
    defaults: dict[str, float] = {}
    if config.generation_config == "auto":
        defaults = generation_defaults(source) or dict(profile.sampling)
        if defaults:
            logger.info("default sampling for requests that set none (%s): %s", "generation_config.json" if not source.is_gguf else profile.name,
                        ", ".join(f"{k}={v:g}" for k, v in sorted(defaults.items())))
    state = ServingState(tokenizer, vocabulary, fmt, compiler, ToolGrammarCompiler(compiler, fmt), engine, runner.max_model_len, profile, defaults)
    _warm_up(state)
    logger.info("model ready in %.1f s (vocabulary %d tokens, context %d tokens, %d slots)", time.perf_counter() - started,
                vocabulary.vocab_size, runner.max_model_len, config.max_batch_size)
    return state


def _warm_up(state: ServingState) -> None:
    """One tiny constrained generation, so the first request does not pay for native kernels and caches."""
    done = threading.Event()
    grammar = state.grammar_compiler.compile_regex("(yes|no)")
    ids = state.tokenizer.encode("Answer yes or no:", add_special_tokens=False) or [0]
    request = EngineRequest("warmup", ids, SamplingParams(temperature=0.0), max_tokens=2, grammar=grammar)
    state.engine.submit(request, lambda event: done.set() if event.finish_reason else None)
    if not done.wait(timeout=120):
        logger.warning("the warm-up generation did not finish in 120 s")


# ----- the app -----


def create_app(config: ServerConfig | None = None, loader: Callable[[ServerConfig], ServingState] = load_serving_state,
               on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The FastAPI app; the model loads on a background thread at startup (/health answers 503 until ready).

    Args:
        config: server settings (default: `ServerConfig.from_env()`).
        loader: builds the `ServingState` (tests pass a smaller one).
        on_load_failure: called if loading fails (the CLI stops the server).
    """
    config = config or ServerConfig.from_env()
    metrics = ServerMetrics()
    holder: dict[str, Any] = {"serving": None, "error": None, "started": int(time.time())}

    def read_stat(name: str) -> float:
        serving: ServingState | None = holder["serving"]
        if serving is None:
            raise RuntimeError("not ready")
        stats, compiler = serving.engine.stats, serving.grammar_compiler
        return {
            "num_requests_waiting": stats.num_waiting, "num_requests_running": stats.num_running, "batch_size": stats.last_batch_size,
            "jump_forward_tokens_total": stats.num_jump_forward_tokens, "generated_tokens_total": stats.num_generated_tokens,
            "prefix_cached_tokens_total": stats.num_prefix_cached_tokens, "engine_steps_total": stats.num_steps,
            "grammar_cache_hits_total": compiler.num_cache_hits, "grammar_cache_misses_total": compiler.num_cache_misses,
        }[name]

    metrics.add_engine_gauges(read_stat)

    def load() -> None:
        try:
            holder["serving"] = loader(config)
        except BaseException as error:  # noqa: BLE001 - reported, and the CLI exits
            logger.exception("loading the model failed")
            holder["error"] = f"{type(error).__name__}: {error}"
            if on_load_failure is not None:
                on_load_failure(error)

    async def log_stats() -> None:
        """Every STATS_INTERVAL_S while busy, one line: requests running and waiting, prompt and output tokens/s."""
        last = (time.perf_counter(), 0, 0, 0)
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            serving: ServingState | None = holder["serving"]
            if serving is None:
                continue
            s = serving.engine.stats
            now = (time.perf_counter(), s.num_prefill_tokens, s.num_generated_tokens, s.num_jump_forward_tokens)
            elapsed = now[0] - last[0]
            if s.num_running or s.num_waiting or now[1:] != last[1:]:
                generated = now[2] - last[2]
                logger.info("engine: %d running, %d waiting; prompt %.1f tokens/s, output %.1f tokens/s (%.0f%% forced by grammars)",
                            s.num_running, s.num_waiting, (now[1] - last[1]) / elapsed, generated / elapsed,
                            100 * (now[3] - last[3]) / generated if generated else 0)
            last = now

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=load, name="strictcall-load", daemon=True)
        thread.start()
        stats_task = asyncio.create_task(log_stats())
        yield
        stats_task.cancel()
        serving: ServingState | None = holder["serving"]
        if serving is not None:
            serving.engine.shutdown()

    app = FastAPI(title="strictcall", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.metrics = metrics
    app.state.holder = holder

    def ready() -> ServingState:
        serving = holder["serving"]
        if serving is None:
            if holder["error"]:
                raise APIError(503, f"the model failed to load: {holder['error']}", code="model_load_failed")
            raise APIError(503, "the model is still loading; retry in a few seconds (GET /health says when it is ready)", code="model_loading")
        return serving

    def check_model(name: str) -> str:
        if name not in config.model_names:
            raise APIError(404, f"The model `{name}` does not exist. This server serves: {', '.join(config.model_names)}.",
                           param="model", code="model_not_found")
        return name

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        message = f"{request.method} {request.url.path}: {error.detail}"
        return APIError(error.status_code, message, code=code, type="invalid_request_error").response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return _bad_request(str(error)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s", request.url.path)
        return APIError(500, "internal server error (a bug in strictcall; the server log has the traceback)", code="internal_error").response()

    @app.get("/health")
    async def health() -> Response:
        if holder["serving"] is not None:
            return JSONResponse({"status": "ok"})
        status = "failed" if holder["error"] else "loading"
        return JSONResponse({"status": status, "error": holder["error"]}, status_code=503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> Response:
        data = [{"id": name, "object": "model", "created": holder["started"], "owned_by": "strictcall", "max_model_len": config.max_model_len}
                for name in config.model_names]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> Response:
        check_model(name)
        return JSONResponse({"id": name, "object": "model", "created": holder["started"], "owned_by": "strictcall"})

    async def generate(request: Request, request_type: type, plan_fn: Any, id_prefix: str, stream_fn: Any, response_fn: Any) -> Response:
        """Shared by both generation routes: parse, plan (grammars compiled), run, then stream or answer."""
        arrival = time.perf_counter()
        body = await _read_json(request, config.max_body_bytes)
        req = _parse(request_type, body)
        model_name = check_model(req.model)
        serving = ready()
        plan = await plan_fn(serving, config, metrics, req)
        meta = _Meta(random_id(id_prefix), int(time.time()), model_name)
        headers = _report_unenforced(meta.id, plan.unenforced, metrics)
        batch = _Batch(serving.engine, plan.requests, metrics, arrival)

        def finished() -> None:
            batch.abort()
            if config.log_requests:
                logger.info("%s", batch.log_line(meta.id, plan.num_prompt_tokens))

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(stream_fn(serving, plan, batch, meta, include_usage, metrics), on_close=finished, headers=headers)
        try:
            results = await _until_disconnect(request, _collect(batch, len(plan.requests)), batch)
            return JSONResponse(response_fn(serving, plan, batch, results, meta, metrics), headers=headers)
        finally:
            finished()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest, _plan_chat, "chatcmpl-", _chat_stream, _chat_response)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest, _plan_completion, "cmpl-", _completion_stream, _completion_response)

    # Pure ASGI layers (added last = outermost): request counting around everything, then CORS, then the key.
    if config.api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=config.api_key)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


class _MetricsMiddleware:
    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
            self.metrics.requests.inc(route=route, status=str(status["code"]))


class _ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every /v1 route (/health and /metrics stay open, as in vLLM)."""

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1") and scope.get("method") != "OPTIONS":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = ("Missing API key: send it as `Authorization: Bearer <key>`." if not given
                           else "Incorrect API key provided.")
                response = APIError(401, message, code="invalid_api_key", type="invalid_request_error").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _SSEResponse(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (finished, failed, client gone)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str] | None = None):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # already closed or failed: nothing left to release
                    pass


UNENFORCED_HEADER = "x-strictcall-unenforced"


def _report_unenforced(request_id: str, unenforced: tuple[tuple[str, str, str], ...], metrics: ServerMetrics) -> dict[str, str]:
    """What a non-strict schema asked for that the grammar does not enforce: a response header (a JSON list of
    `{"param", "pointer", "keyword"}`, ASCII), a log line and a metric per keyword."""
    if not unenforced:
        return {}
    for _, _, keyword in unenforced:
        metrics.unenforced_keywords.inc(keyword=keyword)
    logger.info("%s: not enforced (non-strict schemas; the rest is): %s", request_id,
                "; ".join(f"{param} at {pointer or '/'}: {keyword}" for param, pointer, keyword in unenforced))
    entries = [{"param": param, "pointer": pointer, "keyword": keyword} for param, pointer, keyword in unenforced]
    return {UNENFORCED_HEADER: json.dumps(entries, separators=(",", ":"))}


async def _read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise APIError(413, f"the request body has {length} bytes; this server takes at most {max_bytes} (--max-body-bytes)", code="request_too_large")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is larger than {max_bytes} bytes (--max-body-bytes)", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _bad_request(f"We could not parse the JSON body of your request: {error}. Send a JSON object with Content-Type: application/json.",
                           code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad_request(f"the request body must be a JSON object, got a JSON {type(body).__name__}", code="invalid_json")
    return body


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise _validation_error(error) from None


# ----- planning: validation, prompt, grammar, sampling -----


@dataclass
class _Plan:
    requests: list[EngineRequest]
    prompt_lengths: list[int]
    parse_tools: bool
    constrained: bool
    tool_names: frozenset[str] | None
    logprobs: bool
    top_logprobs: int
    prompt_texts: list[str]  # completions: echo
    num_prompt_tokens: int  # each distinct prompt counted once, as OpenAI counts n > 1
    echo: bool = False
    # (param, JSON pointer, keyword) of each non-strict schema keyword the grammar does not enforce.
    unenforced: tuple[tuple[str, str, str], ...] = ()


@dataclass
class _Meta:
    id: str
    created: int
    model: str


def _check_common(req: _GenerationFields, config: ServerConfig) -> None:
    if req.n > config.max_n:
        raise _bad_request(f"n={req.n} is more than this server allows ({config.max_n}, --max-n)", "n")
    if req.repetition_penalty not in (None, 1.0):
        raise _bad_request("repetition_penalty is not supported; use presence_penalty or frequency_penalty", "repetition_penalty", "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise _bad_request("stream_options is only allowed when stream is true", "stream_options")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 16:
        raise _bad_request(f"stop takes at most 16 strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise _bad_request("stop strings must not be empty", "stop")


def _stops(req: _GenerationFields) -> tuple[str, ...]:
    return (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())


def _logit_bias(req: _GenerationFields, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias`: token id (as a string) -> -100..100, added to the logit (the grammar still decides)."""
    bias = []
    for key, value in (req.logit_bias or {}).items():
        if not key.strip().lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise _bad_request(f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}", "logit_bias")
        if not -100 <= value <= 100:
            raise _bad_request(f"logit_bias values must be between -100 and 100, got {value} for token {key}", "logit_bias")
        bias.append((int(key), float(value)))
    return tuple(bias)


def _min_tokens(req: _GenerationFields, max_tokens: int) -> int:
    """vLLM's `min_tokens` and `ignore_eos`: end-of-sequence tokens are held back (free text only; a grammar's end
    still ends a constrained turn)."""
    if req.ignore_eos:
        return max_tokens
    if req.min_tokens is not None and req.min_tokens > max_tokens:
        raise _bad_request(f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_tokens})", "min_tokens")
    return req.min_tokens or 0


def _guided(req: _GenerationFields) -> tuple[str, Any, str] | None:
    """The vLLM-style constraint, if any: (kind, value, param)."""
    found: list[tuple[str, Any, str]] = []
    if req.guided_json is not None:
        found.append(("json", req.guided_json, "guided_json"))
    if req.guided_regex is not None:
        found.append(("regex", req.guided_regex, "guided_regex"))
    if req.guided_choice is not None:
        found.append(("choice", req.guided_choice, "guided_choice"))
    if req.guided_grammar is not None:
        raise _bad_request("guided_grammar (EBNF/Lark grammars) is not supported; use guided_json, guided_regex or guided_choice",
                           "guided_grammar", "unsupported_parameter")
    so = req.structured_outputs
    if so is not None:
        if so.grammar is not None or so.structural_tag is not None:
            field = "grammar" if so.grammar is not None else "structural_tag"
            raise _bad_request(f"structured_outputs.{field} is not supported; use json, regex or choice",
                               f"structured_outputs.{field}", "unsupported_parameter")
        if so.json_ is not None:
            found.append(("json", so.json_, "structured_outputs.json"))
        if so.regex is not None:
            found.append(("regex", so.regex, "structured_outputs.regex"))
        if so.choice is not None:
            found.append(("choice", so.choice, "structured_outputs.choice"))
        if so.json_object:
            found.append(("json", {"type": "object"}, "structured_outputs.json_object"))
    if len(found) > 1:
        raise _bad_request(f"give one output constraint, not {len(found)}: {', '.join(p for _, _, p in found)}", found[1][2], "conflicting_parameters")
    if found and req.response_format is not None and req.response_format.type != "text":
        raise _bad_request(f"{found[0][2]} and response_format both constrain the output; give one", found[0][2], "conflicting_parameters")
    if not found:
        return None
    kind, value, param = found[0]
    if kind == "json" and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise _bad_request(f"{param} must be a JSON Schema (an object, or its JSON text): {error}", param) from None
    if kind == "choice" and (not value or not all(isinstance(c, str) for c in value)):
        raise _bad_request(f"{param} must be a non-empty list of strings", param)
    return kind, value, param


def _check_schema_size(schema: Any, param: str, config: ServerConfig) -> None:
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > config.max_schema_bytes:
        raise _bad_request(f"{param}: the schema has {size} bytes; this server compiles at most {config.max_schema_bytes} (--max-schema-bytes)",
                           param, "schema_too_large")


async def _compile(metrics: ServerMetrics, config: ServerConfig, build: Callable[[], Any], param: str) -> Any:
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(asyncio.to_thread(build), timeout=config.compile_timeout_s)
    except asyncio.TimeoutError:
        raise _bad_request(
            f"compiling the grammar for {param} took longer than {config.compile_timeout_s:g} s (--compile-timeout-s); simplify the schema "
            "(fewer alternatives, smaller bounds) or retry: the compile goes on in the background and is cached",
            param, "grammar_compile_timeout") from None
    except ToolGrammarError as error:
        raise _bad_request(str(error), error.param, "unsupported_schema") from None
    except ValueError as error:  # UnsupportedSchemaError, RegexSyntaxError, AutomatonLimitError
        raise _bad_request(f"{param}: {error}", param, "unsupported_schema") from None
    finally:
        metrics.grammar_compile_time.observe(time.perf_counter() - started)


async def _guided_grammar(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, spec: tuple[str, Any, str]) -> CompiledGrammar:
    kind, value, param = spec
    compiler = serving.grammar_compiler
    if kind == "json":
        if not isinstance(value, (dict, bool)):
            raise _bad_request(f"{param} must be a JSON Schema object", param)
        _check_schema_size(value, param, config)
        return await _compile(metrics, config, lambda: compiler.compile_json_schema(value), param)
    if kind == "regex":
        if len(value.encode()) > config.max_schema_bytes:
            raise _bad_request(f"{param} is longer than {config.max_schema_bytes} bytes (--max-schema-bytes)", param, "schema_too_large")
        return await _compile(metrics, config, lambda: compiler.compile_regex(value), param)
    regex = "(?:" + "|".join(escape(choice) for choice in value) + ")"
    return await _compile(metrics, config, lambda: compiler.compile_regex(regex), param)


def _sampling(req: _GenerationFields, index: int, logprobs: bool, top_logprobs: int, defaults: dict[str, float]) -> SamplingParams:
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
        field = message.split("=", 1)[0].removeprefix("SamplingParams.") if message.startswith("SamplingParams.") else None
        raise _bad_request(message.replace("SamplingParams.", ""), field) from None


def _max_tokens(requested: int | None, prompt_length: int, max_model_len: int, param: str, prompt_param: str, default: int | None = None) -> int:
    """The output budget: the request's (which must fit the context), else `default` capped by the context left."""
    room = max_model_len - prompt_length
    if room < 1:
        raise _bad_request(f"the prompt has {prompt_length} tokens; this model's context is {max_model_len} tokens (--max-model-len), "
                           "and at least one must be left for the output. Shorten the prompt.", prompt_param, "context_length_exceeded")
    if requested is None:
        return room if default is None else min(room, default)
    if requested > room:
        raise _bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {prompt_length + requested} tokens "
            f"({prompt_length} in the prompt, {requested} for the completion). Reduce the prompt or {param}.", param, "context_length_exceeded")
    return requested


async def _plan_chat(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, req: ChatCompletionRequest) -> _Plan:
    _check_common(req, config)
    if req.functions is not None or req.function_call is not None:
        field = "functions" if req.functions is not None else "function_call"
        raise _bad_request(f"{field} is deprecated and not supported here; use tools and tool_choice", field, "unsupported_parameter")
    if req.audio is not None or (req.modalities and any(m != "text" for m in req.modalities)):
        raise _bad_request("this server generates text only", "modalities" if req.modalities else "audio", "unsupported_parameter")
    if req.web_search_options is not None:
        raise _bad_request("web search is not available on this server", "web_search_options", "unsupported_parameter")
    if req.top_logprobs and not req.logprobs:
        raise _bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    for i, message in enumerate(req.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise _bad_request(f"messages[{i}]: a tool message needs tool_call_id", f"messages[{i}].tool_call_id", "missing_required_parameter")
        if message.role in ("system", "developer", "user") and message.content is None:
            raise _bad_request(f"messages[{i}]: a {message.role} message needs content", f"messages[{i}].content", "missing_required_parameter")
        if message.role == "assistant" and message.content is None and not message.tool_calls:
            raise _bad_request(f"messages[{i}]: an assistant message needs content or tool_calls", f"messages[{i}].content", "missing_required_parameter")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    if tools and len(tools) > config.max_tools:
        raise _bad_request(f"{len(tools)} tools were given; this server takes at most {config.max_tools} (--max-tools)", "tools", "too_many_tools")
    for i, tool in enumerate(tools or []):
        _check_schema_size(tool["function"].get("parameters", {}), f"tools[{i}].function.parameters", config)
    if req.tool_choice is not None and req.tool_choice != "none" and not tools:
        raise _bad_request("tool_choice is only allowed when tools are specified", "tool_choice")
    try:
        choice = ToolChoice.parse(req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none"))
    except ToolGrammarError as error:
        raise _bad_request(str(error), error.param) from None
    names = frozenset(t["function"]["name"] for t in tools or [])
    if choice.mode == "named" and choice.name not in names:
        raise _bad_request(f"tool_choice names function {choice.name!r}, which is not in tools ({', '.join(sorted(names))})", "tool_choice")
    response_format = req.response_format.model_dump(by_alias=True, exclude_none=True) if req.response_format else None
    if response_format and response_format["type"] == "json_schema":
        spec = response_format.get("json_schema")
        if not spec or "schema" not in spec:
            raise _bad_request("response_format json_schema needs json_schema.schema", "response_format.json_schema", "missing_required_parameter")
        _check_schema_size(spec["schema"], "response_format.json_schema.schema", config)
    guided = _guided(req)
    if guided and tools and choice.mode != "none":
        raise _bad_request(f"{guided[2]} constrains the whole answer, so it cannot be combined with tool calls; set tool_choice to 'none' or drop it",
                           guided[2], "conflicting_parameters")
    options = req.strictcall or StrictcallOptions()
    constrained = options.constrained

    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        prompt = render_prompt(serving.tokenizer, serving.format, messages, tools, choice.mode)
    except PromptError as error:
        raise _bad_request(str(error), error.param) from None
    prompt_ids = serving.tokenizer.encode(prompt, add_special_tokens=False)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    default = config.default_max_tokens or int(serving.sampling_defaults.get("max_tokens", DEFAULT_MAX_TOKENS))
    max_tokens = _max_tokens(requested, len(prompt_ids), serving.max_model_len, param, "messages", default)
    bias = _logit_bias(req, serving.vocabulary.vocab_size)

    grammar: TurnGrammar | CompiledGrammar | None = None
    unenforced: tuple[tuple[str, str, str], ...] = ()
    if constrained and guided:
        grammar = await _guided_grammar(serving, config, metrics, guided)
    elif constrained and (tools or response_format):
        rf = None if response_format is None or response_format["type"] == "text" else response_format
        parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
        turn = await _compile(metrics, config, lambda: serving.tool_compiler.compile_turn(tools, req.tool_choice if tools else None, parallel, rf),
                              "tools" if tools else "response_format")
        grammar = None if turn.is_unconstrained else turn
        unenforced = turn.unenforced
    top = req.top_logprobs or 0
    auto_tool_bias = options.auto_tool_bias if options.auto_tool_bias is not None else (
        config.auto_tool_bias if config.auto_tool_bias is not None else serving.profile.auto_tool_bias)
    # The bias is for the decision to act on a user's request; after a tool result the model should answer from it
    # (biased there, SmolLM2 calls the same tool again).
    answers_user = messages[-1]["role"] == "user"
    opening = serving.call_opening if tools and choice.mode == "auto" and guided is None and answers_user else ()
    requests = [
        EngineRequest(random_id("req-", 16), prompt_ids, _sampling(req, i, bool(req.logprobs), top, serving.sampling_defaults), max_tokens=max_tokens,
                      min_tokens=_min_tokens(req, max_tokens), logit_bias=bias, call_opening=opening,
                      call_opening_bias=auto_tool_bias, stop=_stops(req), grammar=grammar,
                      jump_forward=options.jump_forward)
        for i in range(req.n)
    ]
    parse_tools = bool(tools) and choice.mode != "none" and guided is None
    return _Plan(requests, [len(prompt_ids)] * req.n, parse_tools, constrained, names if parse_tools else None, bool(req.logprobs), top, [prompt],
                 len(prompt_ids), unenforced=unenforced)


async def _plan_completion(serving: ServingState, config: ServerConfig, metrics: ServerMetrics, req: CompletionRequest) -> _Plan:
    _check_common(req, config)
    if req.suffix:
        raise _bad_request("suffix (fill-in-the-middle) is not supported", "suffix", "unsupported_parameter")
    if req.best_of is not None and req.best_of != req.n:
        raise _bad_request("best_of is not supported (it must equal n)", "best_of", "unsupported_parameter")
    prompts: list[str | list[int]]
    if isinstance(req.prompt, str):
        prompts = [req.prompt]
    elif req.prompt and isinstance(req.prompt[0], int):
        prompts = [req.prompt]  # type: ignore[list-item]
    else:
        prompts = list(req.prompt)  # type: ignore[arg-type]
    if not prompts:
        raise _bad_request("prompt must not be empty", "prompt")
    if len(prompts) * req.n > config.max_n:
        raise _bad_request(f"{len(prompts)} prompts x n={req.n} choices is more than this server allows ({config.max_n}, --max-n)", "n")
    vocab_size = serving.vocabulary.vocab_size
    ids_list, texts = [], []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            ids = serving.tokenizer.encode(prompt, add_special_tokens=True)
            text = prompt
        else:
            if any(not 0 <= t < vocab_size for t in prompt):
                raise _bad_request(f"{param}: token ids must be in [0, {vocab_size})", param)
            ids, text = list(prompt), serving.tokenizer.decode(prompt)
        if not ids:
            raise _bad_request(f"{param} is empty", param)
        ids_list.append(ids)
        texts.append(text)
    max_tokens = [_max_tokens(req.max_tokens, len(ids), serving.max_model_len, "max_tokens", "prompt") for ids in ids_list]
    bias = _logit_bias(req, serving.vocabulary.vocab_size)
    guided = _guided(req)
    options = req.strictcall or StrictcallOptions()
    grammar: TurnGrammar | CompiledGrammar | None = None
    unenforced: tuple[tuple[str, str, str], ...] = ()
    if options.constrained and guided:
        grammar = await _guided_grammar(serving, config, metrics, guided)
    elif options.constrained and req.response_format is not None and req.response_format.type != "text":
        rf = req.response_format.model_dump(by_alias=True, exclude_none=True)
        if rf["type"] == "json_schema":
            spec = rf.get("json_schema") or {}
            if "schema" not in spec:
                raise _bad_request("response_format json_schema needs json_schema.schema", "response_format.json_schema", "missing_required_parameter")
            _check_schema_size(spec["schema"], "response_format.json_schema.schema", config)
        turn = await _compile(metrics, config, lambda: serving.tool_compiler.compile_turn(None, None, True, rf), "response_format")
        grammar, unenforced = turn, turn.unenforced
    top = req.logprobs or 0
    requests, lengths, prompt_texts = [], [], []
    for ids, text, budget in zip(ids_list, texts, max_tokens):
        for _ in range(req.n):
            index = len(requests)
            requests.append(EngineRequest(random_id("req-", 16), ids, _sampling(req, index, req.logprobs is not None, top, serving.sampling_defaults), max_tokens=budget,
                                          min_tokens=_min_tokens(req, budget), logit_bias=bias, stop=_stops(req), grammar=grammar,
                                          jump_forward=options.jump_forward))
            lengths.append(len(ids))
            prompt_texts.append(text)
    return _Plan(requests, lengths, False, options.constrained, None, req.logprobs is not None, top, prompt_texts,
                 sum(len(ids) for ids in ids_list), bool(req.echo), unenforced)


# ----- running -----


class _Batch:
    """The engine requests of one HTTP request, their events merged into one queue as (choice index, event)."""

    def __init__(self, engine: Engine, requests: list[EngineRequest], metrics: ServerMetrics, arrival: float):
        self.engine = engine
        self.requests = requests
        self.metrics = metrics
        self.arrival = arrival
        self.queue: asyncio.Queue[tuple[int, EngineEvent]] = asyncio.Queue()
        self.pending: set[int] = set()
        self._first: dict[int, float] = {}
        # For the request's log line: output and cached tokens of finished choices, calls returned, finish reasons.
        self.num_output_tokens = 0
        self.num_cached_tokens = 0
        self.num_tool_calls = 0
        self.finish_reasons: list[str] = []
        loop = asyncio.get_running_loop()
        try:
            for i, request in enumerate(requests):
                engine.submit(request, lambda event, i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, event)))
                self.pending.add(i)
        except EngineOverloadedError as error:
            self.abort()
            raise APIError(429, f"the server is busy: {error}", code="rate_limit_exceeded", type="rate_limit_error") from None
        except ValueError as error:
            self.abort()
            raise _bad_request(str(error)) from None

    async def events(self) -> AsyncIterator[tuple[int, EngineEvent]]:
        while self.pending:
            i, event = await self.queue.get()
            if i not in self.pending:
                continue
            now = time.perf_counter()
            if event.token_ids and i not in self._first:
                self._first[i] = now
                self.metrics.time_to_first_token.observe(now - self.arrival)
            if event.finish_reason is not None:
                self.pending.discard(i)
                self._observe_finish(i, event, now)
            yield i, event

    def _observe_finish(self, i: int, event: EngineEvent, now: float) -> None:
        m = self.metrics
        m.finished.inc(finish_reason=event.finish_reason or "")
        m.prompt_tokens.inc(event.num_prompt_tokens)
        m.generation_tokens.inc(event.num_output_tokens)
        m.e2e_latency.observe(now - self.arrival)
        self.num_output_tokens += event.num_output_tokens
        self.num_cached_tokens = max(self.num_cached_tokens, event.num_cached_tokens)
        first = self._first.get(i)
        if first is not None and event.num_output_tokens > 1:
            m.time_per_output_token.observe((now - first) / (event.num_output_tokens - 1))

    def abort(self) -> None:
        for i in list(self.pending):
            self.engine.abort(self.requests[i].request_id)
        self.pending.clear()

    def log_line(self, request_id: str, num_prompt_tokens: int) -> str:
        """One line for the server log: tokens, time to first token, duration, tool calls, finish reasons."""
        first = min(self._first.values(), default=None)
        ttft = "-" if first is None else f"{first - self.arrival:.2f} s"
        finish = ",".join(self.finish_reasons) or "abort"
        return (f"{request_id}: prompt {num_prompt_tokens} tokens ({self.num_cached_tokens} cached), completion {self.num_output_tokens} tokens, "
                f"time to first token {ttft}, total {time.perf_counter() - self.arrival:.2f} s, tool calls {self.num_tool_calls}, finish {finish}")


@dataclass
class _Result:
    text: str = ""
    token_ids: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


async def _collect(batch: _Batch, n: int) -> list[_Result]:
    results = [_Result(token_ids=[], logprobs=[]) for _ in range(n)]
    async for i, event in batch.events():
        r = results[i]
        r.text += event.text
        r.token_ids += event.token_ids  # type: ignore[operator]
        r.logprobs += event.logprobs  # type: ignore[operator]
        if event.finish_reason is not None:
            r.finish_reason, r.error = event.finish_reason, event.error
            r.num_prompt_tokens, r.num_output_tokens, r.num_cached_tokens = event.num_prompt_tokens, event.num_output_tokens, event.num_cached_tokens
    return results


async def _until_disconnect(request: Request, work: Any, batch: _Batch) -> Any:
    """Await `work`, aborting it (and the engine requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                batch.abort()
                raise APIError(499, "the client closed the connection", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
            batch.abort()


def _check_errors(results: list[_Result]) -> None:
    for r in results:
        if r.finish_reason == "error":
            raise APIError(500, f"generation failed: {r.error}", code="generation_error")


def _usage(results: list[_Result], prompt: int) -> dict[str, Any]:
    completion = sum(r.num_output_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": results[0].num_cached_tokens if results else 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _token_text(serving: ServingState, token_id: int) -> tuple[str, bytes]:
    data = serving.vocabulary.token_bytes[token_id] if 0 <= token_id < serving.vocabulary.vocab_size else None
    if data is None:
        text = serving.tokenizer.convert_ids_to_tokens(token_id) or ""
        return text, text.encode("utf-8")
    return data.decode("utf-8", errors="replace"), data


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _MASKED_LOGPROB


def _chat_logprobs(serving: ServingState, logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    out = []
    eos = set(serving.vocabulary.eos_token_ids)
    for lp in logprobs:
        if lp.token_id in eos:
            continue
        text, data = _token_text(serving, lp.token_id)
        top = []
        for token_id, value in lp.top:
            t, d = _token_text(serving, token_id)
            top.append({"token": t, "logprob": _finite(value), "bytes": list(d)})
        out.append({"token": text, "logprob": _finite(lp.logprob), "bytes": list(data), "top_logprobs": top})
    return out


def _chat_finish_reason(engine_reason: str | None, parser: OutputParser) -> str:
    if engine_reason == "length":
        return "length"
    if engine_reason == "stop" and parser.has_complete_calls:
        return "tool_calls"
    return "stop"


def _new_parser(serving: ServingState, plan: _Plan) -> OutputParser:
    return OutputParser(serving.format, parse_tools=plan.parse_tools, constrained=plan.constrained, tool_names=plan.tool_names)


def _chat_response(serving: ServingState, plan: _Plan, batch: _Batch, results: list[_Result], meta: _Meta, metrics: ServerMetrics) -> dict[str, Any]:
    _check_errors(results)
    choices = []
    for i, r in enumerate(results):
        parser = _new_parser(serving, plan)
        parser.feed(r.text)
        parser.finish()
        # Only complete calls: a call that max_tokens cut short is not a call a client can execute (the
        # finish_reason says `length`). A stream has sent its fragments already; its finish chunk says `length`.
        calls = [c for c in parser.calls if c.is_complete]
        message: dict[str, Any] = {"role": "assistant", "content": parser.content if parser.content or not calls else None, "refusal": None}
        if calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
            metrics.tool_calls.inc(len(calls), constrained=str(plan.constrained).lower())
        logprobs = {"content": _chat_logprobs(serving, r.logprobs or []), "refusal": None} if plan.logprobs else None
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": _chat_finish_reason(r.finish_reason, parser)})
        batch.num_tool_calls += len(calls)
        batch.finish_reasons.append(choices[-1]["finish_reason"])
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
            "choices": choices, "usage": _usage(results, plan.num_prompt_tokens)}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _error_event(message: str) -> str:
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": "generation_error"}})


async def _chat_stream(serving: ServingState, plan: _Plan, batch: _Batch, meta: _Meta, include_usage: bool, metrics: ServerMetrics) -> AsyncIterator[str]:
    n = len(plan.requests)
    parsers = [_new_parser(serving, plan) for _ in range(n)]
    finals: list[_Result] = [_Result() for _ in range(n)]
    pending_logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        logprobs = None
        if plan.logprobs and pending_logprobs[index]:
            logprobs = {"content": _chat_logprobs(serving, pending_logprobs[index]), "refusal": None}
            pending_logprobs[index] = []
        body: dict[str, Any] = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
                                "system_fingerprint": None,
                                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    started = [False] * n

    def pieces(index: int, delta: Delta, finishing: bool) -> list[dict[str, Any]]:
        # As OpenAI streams: the role comes first, with `content: null` merged into the first tool-call piece,
        # or as its own chunk with `content: ""` before text (or before a finish with no output).
        out = _delta_pieces(delta)
        if not started[index] and (out or finishing):
            started[index] = True
            if out and "tool_calls" in out[0]:
                out[0] = {"role": "assistant", "content": None, "refusal": None, **out[0]}
            else:
                out.insert(0, {"role": "assistant", "content": "", "refusal": None})
        return out

    try:
        async for i, event in batch.events():
            if event.finish_reason == "error":
                batch.abort()
                yield _error_event(f"generation failed: {event.error}")
                return
            pending_logprobs[i] += event.logprobs
            delta = parsers[i].feed(event.text)
            if event.finish_reason is not None:
                delta.extend(parsers[i].finish())
            for piece in pieces(i, delta, event.finish_reason is not None):
                yield chunk(i, piece)
            if event.finish_reason is not None:
                finals[i] = _Result(finish_reason=event.finish_reason, num_prompt_tokens=event.num_prompt_tokens,
                                    num_output_tokens=event.num_output_tokens, num_cached_tokens=event.num_cached_tokens)
                if parsers[i].calls:
                    metrics.tool_calls.inc(len(parsers[i].calls), constrained=str(plan.constrained).lower())
                batch.num_tool_calls += sum(c.is_complete for c in parsers[i].calls)
                batch.finish_reasons.append(_chat_finish_reason(event.finish_reason, parsers[i]))
                yield chunk(i, {}, batch.finish_reasons[-1])
        if include_usage:
            yield _sse({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
                        "system_fingerprint": None, "choices": [], "usage": _usage(finals, plan.num_prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        batch.abort()


def _delta_pieces(delta: Delta) -> list[dict[str, Any]]:
    """A parser delta as OpenAI stream deltas: content first, then one delta per tool-call piece."""
    pieces: list[dict[str, Any]] = []
    if delta.content:
        pieces.append({"content": delta.content})
    for call in delta.tool_calls:
        if call.id is not None:
            entry = {"index": call.index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        else:
            entry = {"index": call.index, "function": {"arguments": call.arguments}}
        pieces.append({"tool_calls": [entry]})
    return pieces


def _completion_logprobs(serving: ServingState, logprobs: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    eos = set(serving.vocabulary.eos_token_ids)
    for lp in logprobs:
        if lp.token_id in eos:
            continue
        text, _ = _token_text(serving, lp.token_id)
        tokens.append(text)
        values.append(_finite(lp.logprob))
        tops.append({_token_text(serving, t)[0]: _finite(v) for t, v in lp.top} if lp.top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _completion_response(serving: ServingState, plan: _Plan, batch: _Batch, results: list[_Result], meta: _Meta, metrics: ServerMetrics) -> dict[str, Any]:
    _check_errors(results)
    choices = []
    for i, r in enumerate(results):
        prefix = plan.prompt_texts[i] if plan.echo else ""
        logprobs = _completion_logprobs(serving, r.logprobs or [], len(prefix)) if plan.logprobs else None
        choices.append({"index": i, "text": prefix + r.text, "logprobs": logprobs, "finish_reason": "length" if r.finish_reason == "length" else "stop"})
        batch.finish_reasons.append(choices[-1]["finish_reason"])
    usage = _usage(results, plan.num_prompt_tokens)
    return {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
            "choices": choices, "usage": usage}


async def _completion_stream(serving: ServingState, plan: _Plan, batch: _Batch, meta: _Meta, include_usage: bool, metrics: ServerMetrics) -> AsyncIterator[str]:
    n = len(plan.requests)
    finals = [_Result() for _ in range(n)]
    offsets = [len(plan.prompt_texts[i]) if plan.echo else 0 for i in range(n)]

    def chunk(index: int, text: str, logprobs: list[TokenLogprob], finish_reason: str | None = None) -> str:
        lp = None
        if plan.logprobs:
            lp = _completion_logprobs(serving, logprobs, offsets[index])
            offsets[index] += len(text)
        body: dict[str, Any] = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
                                "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    try:
        if plan.echo:
            for i in range(n):
                yield chunk(i, plan.prompt_texts[i], [])
        async for i, event in batch.events():
            if event.finish_reason == "error":
                batch.abort()
                yield _error_event(f"generation failed: {event.error}")
                return
            finish = None if event.finish_reason is None else ("length" if event.finish_reason == "length" else "stop")
            if finish:
                batch.finish_reasons.append(finish)
            if event.text or event.logprobs or finish:
                yield chunk(i, event.text, list(event.logprobs), finish)
            if event.finish_reason is not None:
                finals[i] = _Result(finish_reason=event.finish_reason, num_prompt_tokens=event.num_prompt_tokens,
                                    num_output_tokens=event.num_output_tokens, num_cached_tokens=event.num_cached_tokens)
        if include_usage:
            yield _sse({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
                        "choices": [], "usage": _usage(finals, plan.num_prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        batch.abort()
