"""`POST /v1/responses` (OpenAI's Responses API) on the chat path: plan, answer, stream, store; and `GET` /
`DELETE /v1/responses/{id}`.

A request is read (`responses_protocol`), continued from its stored conversation if it names a
`previous_response_id` (`response_store`), translated into a chat completion request and planned by
`plan_chat` (the same checks, prompt, budget, sampling and compiled turn as chat); its output is built from the
chat parser's deltas (`response_items`).

Invariants: the Response object of a stream's last event (`response.completed` or `response.incomplete`) is the
body a non-streamed request gets, and the one `GET` returns; a response is stored only once it is finished
(completed or incomplete) and only with `store` not false; events are numbered by `sequence_number` from 0.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from strictcall.server.config import ServerConfig
from strictcall.server.errors import APIError, bad_request
from strictcall.server.generation import ChoiceResult, Generation
from strictcall.server.metrics import ServerMetrics
from strictcall.server.planning import Plan, plan_chat
from strictcall.server.protocol import ChatCompletionRequest, parse_request
from strictcall.server.response_items import Event, OutputBuilder
from strictcall.server.response_store import MissingResponse, ResponseStore
from strictcall.server.responses import Meta, chat_finish_reason, new_parser
from strictcall.server.responses_protocol import (
    FunctionTool,
    ResponsesRequest,
    function_tools,
    input_items,
    output_as_input,
    text_echo,
    to_chat,
    tool_choice_echo,
    tools_echo,
    unsupported_fields,
)
from strictcall.server.serving import ServingState


@dataclass
class ResponseContext:
    """What answering a Responses request needs beyond the chat plan: the request's echo in the Response object,
    the input items to store, and where."""

    echo: dict[str, Any]
    input_items: list[dict[str, Any]]
    previous_id: str | None
    store: ResponseStore | None  # None: `store: false`

    def response(self, meta: Meta, status: str, output: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """The Response object in a state (`in_progress`, `completed`, `incomplete`, `failed`)."""
        return {"id": meta.id, "object": "response", "created_at": meta.created, "status": status, "error": None, "incomplete_details": None,
                **self.echo, "output": output, "usage": None, **fields}


@dataclass
class ResponsePlan(Plan):
    """A chat plan with the Responses context."""

    context: ResponseContext = field(default_factory=lambda: ResponseContext({}, [], None, None))


async def plan_response(store: ResponseStore, serving: ServingState, config: ServerConfig, metrics: ServerMetrics,
                        req: ResponsesRequest) -> ResponsePlan:
    """A Responses request -> its plan: the chat plan of its translation, errors naming the Responses fields."""
    unsupported_fields(req)
    history = _history(store, req.previous_response_id)
    items = input_items(req.input)
    if not items and req.previous_response_id is None:
        raise bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    tools = function_tools(req.tools)
    translation = to_chat(req, tools, history, items)
    try:
        chat = parse_request(ChatCompletionRequest, translation.body)
        plan = await plan_chat(serving, config, metrics, chat)
    except APIError as error:
        raise _strict_by_default(translation.rename(error), tools) from None
    unenforced = tuple((translation.param(param), pointer, keyword) for param, pointer, keyword in plan.unenforced)
    sampling = plan.requests[0].sampling
    echo = {
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "max_tool_calls": req.max_tool_calls,
        "model": req.model, "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": req.store is not False,
        "temperature": sampling.temperature, "text": text_echo(req), "tool_choice": tool_choice_echo(req), "tools": tools_echo(tools),
        "top_logprobs": 0, "top_p": sampling.top_p, "truncation": "disabled", "user": req.user, "metadata": req.metadata or {},
        "background": False,
    }
    context = ResponseContext(echo, items, req.previous_response_id, None if req.store is False else store)
    return ResponsePlan(**{**vars(plan), "unenforced": unenforced}, context=context)


def _strict_by_default(error: APIError, tools: list[FunctionTool]) -> APIError:
    """A strict schema's 400 says why a tool that did not set `strict` is strict here."""
    match = re.fullmatch(r"tools\[(\d+)\]\.parameters", error.param or "")
    if match is None or error.code != "unsupported_schema" or tools[int(match.group(1))].strict is not None:
        return error
    message = f'{error.message} (function tools on /v1/responses are strict unless they set "strict": false, as OpenAI\'s)'
    return APIError(error.status, message, param=error.param, code=error.code, type=error.type)


def _history(store: ResponseStore, previous_id: str | None) -> list[dict[str, Any]]:
    """The earlier turns of a conversation as canonical input items: each response's input, then its output."""
    if previous_id is None:
        return []
    try:
        turns = store.conversation(previous_id)
    except MissingResponse as missing:
        earlier = "" if missing.response_id == previous_id else f" (its earlier response {missing.response_id!r} is no longer stored)"
        raise bad_request(f"Previous response with id {previous_id!r} not found{earlier}. Responses are kept in memory, up to "
                          "--response-store-entries / --response-store-bytes, and not with store: false.", "previous_response_id",
                          "previous_response_not_found") from None
    items: list[dict[str, Any]] = []
    for inputs, body in turns:
        items += inputs + output_as_input(body["output"])
    return items


def _finish(serving: ServingState, generation: Generation, builder: OutputBuilder, result: ChoiceResult, meta: Meta) -> dict[str, Any]:
    """The finished Response object: status, usage, metrics and the log line's counts; stored unless `store: false`."""
    plan = generation.plan
    assert isinstance(plan, ResponsePlan)
    context = plan.context
    calls = builder.num_calls
    if calls:
        generation.metrics.tool_calls.inc(calls, constrained=str(plan.output.constrained).lower())
    generation.num_tool_calls += calls
    generation.finish_reasons.append(chat_finish_reason(result.finish_reason, builder.parser))
    usage = {"input_tokens": plan.num_prompt_tokens,
             "input_tokens_details": {"cached_tokens": result.num_cached_tokens, "cache_write_tokens": 0},
             "output_tokens": result.num_output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": plan.num_prompt_tokens + result.num_output_tokens}
    if result.finish_reason == "length":
        body = context.response(meta, "incomplete", builder.output, usage=usage, incomplete_details={"reason": "max_output_tokens"})
    else:
        body = context.response(meta, "completed", builder.output, usage=usage, completed_at=int(time.time()))
    if context.store is not None:
        context.store.put(meta.id, body, context.input_items, context.previous_id)
    return body


def response_body(serving: ServingState, generation: Generation, results: list[ChoiceResult], meta: Meta) -> dict[str, Any]:
    """The non-streamed answer: the whole text through the same builder a stream uses."""
    [result] = results
    if result.finish_reason == "error":
        raise APIError(500, f"generation failed: {result.error}", code="generation_error")
    builder = OutputBuilder(new_parser(serving, generation.plan))
    builder.feed(result.text)
    builder.finish(result.finish_reason)
    return _finish(serving, generation, builder, result, meta)


def _sse(event: Event) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def response_stream(serving: ServingState, generation: Generation, meta: Meta, include_usage: bool) -> AsyncIterator[str]:
    """The answer as the Responses API's server-sent events (`event:` and `data:` lines; no `[DONE]`)."""
    plan = generation.plan
    assert isinstance(plan, ResponsePlan)
    numbers = itertools.count()

    def event(payload: Event) -> str:
        return _sse({**payload, "sequence_number": next(numbers)})

    yield event({"type": "response.created", "response": plan.context.response(meta, "in_progress", [])})
    yield event({"type": "response.in_progress", "response": plan.context.response(meta, "in_progress", [])})
    builder = OutputBuilder(new_parser(serving, plan))
    async with aclosing(generation.events()) as events:  # leaving early (an error, the client gone) aborts the rest
        async for _, engine_event in events:
            if engine_event.finish_reason == "error":
                error = {"code": "server_error", "message": f"generation failed: {engine_event.error}"}
                yield event({"type": "response.failed", "response": plan.context.response(meta, "failed", builder.output, error=error)})
                return
            for payload in builder.feed(engine_event.text):
                yield event(payload)
            if engine_event.finish_reason is not None:
                for payload in builder.finish(engine_event.finish_reason):
                    yield event(payload)
    body = _finish(serving, generation, builder, generation.results[0], meta)
    yield event({"type": "response.completed" if body["status"] == "completed" else "response.incomplete", "response": body})


def stored_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """`GET /v1/responses/{id}`."""
    body = store.get(response_id)
    if body is None:
        raise _not_found(response_id)
    return body


def delete_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """`DELETE /v1/responses/{id}`."""
    if not store.delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id {response_id!r} not found. Responses are kept in memory (--response-store-entries, "
                         "--response-store-bytes), not with store: false, and not across restarts.", param="response_id", code="not_found")

