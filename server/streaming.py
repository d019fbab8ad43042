"""Streamed answers as server-sent events: `chat.completion.chunk` and `text_completion` chunks.

Invariant: the chunks of a choice add up to its non-streamed answer (both come from the same `OutputParser`):
content deltas concatenate to `content`, a call's first delta carries its `id`, `type` and `name`, and its
`arguments` fragments concatenate exactly to the non-streamed `arguments`. The stream ends with `[DONE]`, or
with an error event if generation failed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from strictcall.server.generation import Generation
from strictcall.server.responses import (
    Meta,
    chat_finish_reason,
    chat_logprobs,
    completion_finish_reason,
    completion_logprobs,
    new_parser,
    usage,
)
from strictcall.server.sequence import TokenLogprob
from strictcall.server.serving import ServingState
from strictcall.server.tool_parser import Delta

DONE = "data: [DONE]\n\n"


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sse(data: dict[str, Any]) -> str:
    return f"data: {_dump(data)}\n\n"


def error_event(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": "generation_error"}})


async def chat_stream(serving: ServingState, generation: Generation, meta: Meta, include_usage: bool) -> AsyncIterator[str]:
    plan = generation.plan
    n = len(plan.requests)
    parsers = [new_parser(serving, plan) for _ in range(n)]
    pending_logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    started = [False] * n

    # The chunk's JSON around its choice is the same for every chunk of the request: written once (the event loop
    # writes a chunk per token per stream, and serializing the whole body each time was most of its work).
    head = _dump({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
                  "system_fingerprint": None})[:-1] + ',"choices":[{"index":'
    tail = "}]" + (',"usage":null}' if include_usage else "}") + "\n\n"

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        logprobs = None
        if plan.logprobs and pending_logprobs[index]:
            logprobs = {"content": chat_logprobs(serving, pending_logprobs[index]), "refusal": None}
            pending_logprobs[index] = []
        return f"data: {head}{index},\"delta\":{_dump(delta)},\"logprobs\":{_dump(logprobs)},\"finish_reason\":{_dump(finish_reason)}{tail}"

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

    async with aclosing(generation.events()) as events:  # leaving early (an error, the client gone) aborts the rest
        async for i, event in events:
            if event.finish_reason == "error":
                yield error_event(f"generation failed: {event.error}")
                return
            pending_logprobs[i] += event.logprobs
            delta = parsers[i].feed(event.text)
            if event.finish_reason is not None:
                delta.extend(parsers[i].finish())
            for piece in pieces(i, delta, event.finish_reason is not None):
                yield chunk(i, piece)
            if event.finish_reason is not None:
                complete = sum(c.is_complete for c in parsers[i].calls)
                if complete:
                    generation.metrics.tool_calls.inc(complete, constrained=str(plan.output.constrained).lower())
                generation.num_tool_calls += complete
                generation.finish_reasons.append(chat_finish_reason(event.finish_reason, parsers[i]))
                yield chunk(i, {}, generation.finish_reasons[-1])
    if include_usage:
        yield sse({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
                   "system_fingerprint": None, "choices": [], "usage": usage(generation.results, plan.num_prompt_tokens)})
    yield DONE


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


async def completion_stream(serving: ServingState, generation: Generation, meta: Meta, include_usage: bool) -> AsyncIterator[str]:
    plan = generation.plan
    n = len(plan.requests)
    offsets = [len(plan.prompt_texts[i]) if plan.echo else 0 for i in range(n)]

    def chunk(index: int, text: str, logprobs: list[TokenLogprob], finish_reason: str | None = None) -> str:
        lp = None
        if plan.logprobs:
            lp = completion_logprobs(serving, logprobs, offsets[index])
            offsets[index] += len(text)
        body: dict[str, Any] = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
                                "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    if plan.echo:
        for i in range(n):
            yield chunk(i, plan.prompt_texts[i], [])
    async with aclosing(generation.events()) as events:
        async for i, event in events:
            if event.finish_reason == "error":
                yield error_event(f"generation failed: {event.error}")
                return
            finish = None if event.finish_reason is None else completion_finish_reason(event.finish_reason)
            if finish:
                generation.finish_reasons.append(finish)
            if event.text or event.logprobs or finish:
                yield chunk(i, event.text, list(event.logprobs), finish)
    if include_usage:
        yield sse({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
                   "choices": [], "usage": usage(generation.results, plan.num_prompt_tokens)})
    yield DONE
