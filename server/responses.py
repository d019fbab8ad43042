"""Non-streamed OpenAI bodies (`chat.completion`, `text_completion`) and the pieces streams share with them:
usage, logprobs, finish reasons, the output parser of a plan.

Invariant: a non-streamed chat message holds only complete tool calls (a call that `max_tokens` cut short is
not a call a client can execute; the finish reason says `length`), and a logprob is always a finite number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from strictcall.server.errors import APIError
from strictcall.server.generation import ChoiceResult, Generation
from strictcall.server.planning import Plan
from strictcall.server.sequence import TokenLogprob
from strictcall.server.serving import ServingState
from strictcall.server.tool_parser import OutputParser

# The logprob JSON cannot carry -inf (a token the grammar masked): this stands for it, as in vLLM.
MASKED_LOGPROB = -9999.0


@dataclass(frozen=True)
class Meta:
    """What every body and chunk of one response repeats."""

    id: str
    created: int
    model: str


def new_parser(serving: ServingState, plan: Plan) -> OutputParser:
    spec = plan.output
    return OutputParser(serving.format, parse_tools=spec.parse_tools, constrained=spec.constrained, tool_names=spec.tool_names)


def chat_finish_reason(engine_reason: str | None, parser: OutputParser) -> str:
    if engine_reason == "length":
        return "length"
    if engine_reason == "stop" and parser.has_complete_calls:
        return "tool_calls"
    return "stop"


def completion_finish_reason(engine_reason: str | None) -> str:
    return "length" if engine_reason == "length" else "stop"


def usage(results: list[ChoiceResult], num_prompt_tokens: int) -> dict[str, Any]:
    completion = sum(r.num_output_tokens for r in results)
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": num_prompt_tokens + completion,
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
    return value if math.isfinite(value) else MASKED_LOGPROB


def chat_logprobs(serving: ServingState, logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
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


def completion_logprobs(serving: ServingState, logprobs: list[TokenLogprob], offset: int) -> dict[str, Any]:
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


def _check_errors(results: list[ChoiceResult]) -> None:
    for r in results:
        if r.finish_reason == "error":
            raise APIError(500, f"generation failed: {r.error}", code="generation_error")


def chat_response(serving: ServingState, generation: Generation, results: list[ChoiceResult], meta: Meta) -> dict[str, Any]:
    plan = generation.plan
    _check_errors(results)
    choices = []
    for i, r in enumerate(results):
        parser = new_parser(serving, plan)
        parser.feed(r.text)
        parser.finish()
        calls = [c for c in parser.calls if c.is_complete]
        message: dict[str, Any] = {"role": "assistant", "content": parser.content if parser.content or not calls else None, "refusal": None}
        if calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
            generation.metrics.tool_calls.inc(len(calls), constrained=str(plan.output.constrained).lower())
        logprobs = {"content": chat_logprobs(serving, r.logprobs), "refusal": None} if plan.logprobs else None
        finish = chat_finish_reason(r.finish_reason, parser)
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
        generation.num_tool_calls += len(calls)
        generation.finish_reasons.append(finish)
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
            "choices": choices, "usage": usage(results, plan.num_prompt_tokens)}


def completion_response(serving: ServingState, generation: Generation, results: list[ChoiceResult], meta: Meta) -> dict[str, Any]:
    plan = generation.plan
    _check_errors(results)
    choices = []
    for i, r in enumerate(results):
        prefix = plan.prompt_texts[i] if plan.echo else ""
        logprobs = completion_logprobs(serving, r.logprobs, len(prefix)) if plan.logprobs else None
        finish = completion_finish_reason(r.finish_reason)
        choices.append({"index": i, "text": prefix + r.text, "logprobs": logprobs, "finish_reason": finish})
        generation.finish_reasons.append(finish)
    return {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "system_fingerprint": None,
            "choices": choices, "usage": usage(results, plan.num_prompt_tokens)}
