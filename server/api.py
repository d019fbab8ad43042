"""The OpenAI-compatible HTTP API: routes and middlewares (the rest of a request's path is in `protocol`,
`planning`, `generation`, `responses` and `streaming`).

Invariants: every error a client can cause is answered in OpenAI's shape with a 4xx status naming the field
(never FastAPI's 422, never a 500); a request never reaches the engine before its prompt, limits and grammars
are checked; whenever a response ends (finished, failed, the client gone) its engine requests are aborted and
the request is logged once.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from strictcall.server.config import ServerConfig
from strictcall.server.errors import APIError, api_error, bad_request
from strictcall.server.generation import Generation
from strictcall.server.metrics import ServerMetrics
from strictcall.server.planning import Plan, plan_chat, plan_completion
from strictcall.server.protocol import ChatCompletionRequest, CompletionRequest, GenerationFields, parse_body, parse_request, random_id
from strictcall.server.response_store import ResponseStore
from strictcall.server.responses import Meta, chat_response, completion_response
from strictcall.server.responses_api import delete_response, plan_response, response_body, response_stream, stored_response
from strictcall.server.responses_protocol import ResponsesRequest
from strictcall.server.serving import ServingState, load_serving_state
from strictcall.server.streaming import chat_stream, completion_stream

logger = logging.getLogger("strictcall.server")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models", "/health", "/metrics")
STATS_INTERVAL_S = 10.0
UNENFORCED_HEADER = "x-strictcall-unenforced"


@dataclass
class AppState:
    """The model once loaded (None while loading), or why loading failed."""

    serving: ServingState | None = None
    error: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class _Route:
    """A generation route: its request model, id prefix, planner, and the two ways to answer."""

    request_type: type[GenerationFields] | type[ResponsesRequest]
    id_prefix: str
    plan: Callable[..., Awaitable[Plan]]
    stream: Callable[..., AsyncIterator[str]]
    respond: Callable[..., dict[str, Any]]


_CHAT = _Route(ChatCompletionRequest, "chatcmpl-", plan_chat, chat_stream, chat_response)
_COMPLETION = _Route(CompletionRequest, "cmpl-", plan_completion, completion_stream, completion_response)


def create_app(config: ServerConfig | None = None, loader: Callable[[ServerConfig], ServingState] = load_serving_state,
               on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The FastAPI app; the model loads on a background thread at startup (/health answers 503 until ready).

    Args:
        config: server settings (default: `ServerConfig.from_env()`).
        loader: builds the `ServingState` (tests pass a smaller one).
        on_load_failure: called if loading fails (the CLI stops the server).
    """
    server = _Server(config or ServerConfig.from_env())

    def load() -> None:
        try:
            server.state.serving = loader(server.config)
        except BaseException as error:  # noqa: BLE001 - reported, and the CLI exits
            logger.exception("loading the model failed")
            server.state.error = f"{type(error).__name__}: {error}"
            if on_load_failure is not None:
                on_load_failure(error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="strictcall-load", daemon=True).start()
        stats_task = asyncio.create_task(_log_engine_stats(server.state))
        yield
        stats_task.cancel()
        if server.state.serving is not None:
            server.state.serving.shutdown()

    app = FastAPI(title="strictcall", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config, app.state.metrics, app.state.app_state = server.config, server.metrics, server.state
    app.state.response_store = server.store
    _add_error_handlers(app)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/metrics", server.metrics_text, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/models/{name:path}", server.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    app.add_api_route("/v1/responses", server.responses, methods=["POST"])
    app.add_api_route("/v1/responses/{response_id}", server.get_response, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}", server.delete_response, methods=["DELETE"])
    _add_middlewares(app, server.config, server.metrics)
    return app


class _Server:
    """The routes over one configuration, its metrics and the loaded model."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics()
        self.state = AppState()
        self.metrics.add_engine_gauges(lambda: self.state.serving)
        self.store = ResponseStore(config.response_store_entries, config.response_store_bytes)
        self._responses = _Route(ResponsesRequest, "resp_", functools.partial(plan_response, self.store), response_stream, response_body)

    def ready(self) -> ServingState:
        if self.state.serving is None:
            if self.state.error:
                raise APIError(503, f"the model failed to load: {self.state.error}", code="model_load_failed")
            raise APIError(503, "the model is still loading; retry in a few seconds (GET /health says when it is ready)", code="model_loading")
        return self.state.serving

    def check_model(self, name: str) -> str:
        if name not in self.config.model_names:
            raise APIError(404, f"The model `{name}` does not exist. This server serves: {', '.join(self.config.model_names)}.",
                           param="model", code="model_not_found")
        return name

    async def health(self) -> Response:
        if self.state.serving is not None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "failed" if self.state.error else "loading", "error": self.state.error}, status_code=503)

    async def metrics_text(self) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self) -> Response:
        data = [{"id": name, "object": "model", "created": self.state.started, "owned_by": "strictcall",
                 "max_model_len": self.config.max_model_len} for name in self.config.model_names]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, name: str) -> Response:
        self.check_model(name)
        return JSONResponse({"id": name, "object": "model", "created": self.state.started, "owned_by": "strictcall"})

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, _CHAT)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, _COMPLETION)

    async def responses(self, request: Request) -> Response:
        return await self.generate(request, self._responses)

    async def get_response(self, response_id: str, stream: str | None = None) -> Response:
        if stream is not None and stream.lower() not in ("false", "0"):
            raise bad_request("streaming a stored response again is not supported; GET it without stream", "stream", "unsupported_parameter")
        return JSONResponse(stored_response(self.store, response_id))

    async def delete_response(self, response_id: str) -> Response:
        return JSONResponse(delete_response(self.store, response_id))

    async def generate(self, request: Request, route: _Route) -> Response:
        """Parse, plan (grammars compiled), submit, then stream or answer."""
        arrival = time.perf_counter()
        req = parse_request(route.request_type, await _read_json(request, self.config.max_body_bytes, self.config.client_timeout_s))
        model_name = self.check_model(req.model)
        serving = self.ready()
        plan = await route.plan(serving, self.config, self.metrics, req)
        meta = Meta(random_id(route.id_prefix), int(time.time()), model_name)
        headers = _report_unenforced(meta.id, plan.unenforced, self.metrics)
        try:
            generation = Generation(serving.engine, plan, self.metrics, arrival, meta.id, self.config.log_requests)
        except Exception as error:
            raise api_error(error) from None

        def finished() -> None:
            generation.close()
            generation.log()

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(route.stream(serving, generation, meta, include_usage), on_close=finished, headers=headers)
        try:
            results = await _until_disconnect(request, generation.collect())
            return JSONResponse(route.respond(serving, generation, results, meta), headers=headers)
        finally:
            finished()


def _add_middlewares(app: FastAPI, config: ServerConfig, metrics: ServerMetrics) -> None:
    """Pure ASGI layers (added last = outermost): request counting around everything, then CORS, then the key."""
    if config.api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=config.api_key, metrics_need_key=config.metrics_need_key)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_MetricsMiddleware, metrics=metrics)


def _error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return _error_response(APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", code=code,
                                        type="invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(bad_request(str(error)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s", request.url.path)
        return _error_response(APIError(500, "internal server error (a bug in strictcall; the server log has the traceback)", code="internal_error"))


async def _log_engine_stats(state: AppState) -> None:
    """Every STATS_INTERVAL_S while busy, one line: requests running and waiting, prompt and output tokens/s."""
    last = (time.perf_counter(), 0, 0, 0)
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        if state.serving is None:
            continue
        s = state.serving.engine.stats
        now = (time.perf_counter(), s.num_prefill_tokens, s.num_generated_tokens, s.num_jump_forward_tokens)
        elapsed = now[0] - last[0]
        if s.num_running or s.num_waiting or now[1:] != last[1:]:
            generated = now[2] - last[2]
            logger.info("engine: %d running, %d waiting; prompt %.1f tokens/s, output %.1f tokens/s (%.0f%% forced by grammars)",
                        s.num_running, s.num_waiting, (now[1] - last[1]) / elapsed, generated / elapsed,
                        100 * (now[3] - last[3]) / generated if generated else 0)
        last = now


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


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError(499, "the client closed the connection", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()


async def _read_json(request: Request, max_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The body, at most `max_bytes` and within `timeout_s`, as a checked JSON object (`protocol.parse_body`)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise APIError(413, f"the request body has {length} bytes; this server takes at most {max_bytes} (--max-body-bytes)", code="request_too_large")
    chunks = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise APIError(413, f"the request body is larger than {max_bytes} bytes (--max-body-bytes)", code="request_too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s (--client-timeout-s)", code="request_timeout") from None
    return parse_body(b"".join(chunks))


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
            route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else
                                                 "/v1/responses/{id}" if path.startswith("/v1/responses/") else "other")
            self.metrics.requests.inc(route=route, status=str(status["code"]))


class _ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every /v1 route; /health stays open (load balancers probe it), and /metrics
    too unless `metrics_need_key` (as in vLLM: Prometheus scrapes it)."""

    def __init__(self, app: Any, api_key: str, metrics_need_key: bool = False):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.metrics_need_key = metrics_need_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        guarded = path.startswith("/v1") or (self.metrics_need_key and path == "/metrics")
        if scope["type"] == "http" and guarded and scope.get("method") != "OPTIONS":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "Missing API key: send it as `Authorization: Bearer <key>`." if not given else "Incorrect API key provided."
                response = _error_response(APIError(401, message, code="invalid_api_key", type="invalid_request_error"))
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
