"""vLLM's tool parser `strictcall` (`--tool-call-parser strictcall`): compiles the turn in the API process and
reads calls back from the text.

`adjust_request` runs after the chat template, before the request is queued. It reads the turn from the
request (tools, `tool_choice`, `parallel_tool_calls`, `response_format`), compiles it (a schema that cannot be
enforced is a 400 naming the field, as on strictcall's server), and hands the engine the turn's spec as the
request's `structured_outputs.structural_tag`: strictcall's backend (backend.py) enforces it in the engine
core, in every `tool_choice` mode, `auto` included, for strict and non-strict tools alike. The class sets no
`structural_tag_model`, so vLLM builds no structural tag of its own, and `supports_required_and_named =
False`, so `required` and named choices are read by this parser (the model's own call syntax) rather than as
vLLM's JSON list. In `auto` mode, on a turn that answers a user message, it also asks the logits processor
(logits_processors.py) to bias the first token of the call's opening (`auto_tool_bias`).

Invariant: `extract_tool_calls` never raises (vLLM answers 400 for an exception there) and returns only
complete calls; the streamed deltas add up to its result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import StructuredOutputsParams
from vllm.tool_parsers.abstract_tool_parser import ToolParser

from strictcall.grammars import ToolCallFormat
from strictcall.server.errors import APIError
from strictcall.server.tool_parser import Delta
from strictcall.vllm.grammar import process_compiler
from strictcall.vllm.output import TurnStream, auto_tool_bias, model_format, read_turn, strictcall_options
from strictcall.vllm.turn_spec import TurnSpec, compile_turn_spec, is_turn_spec, turn_spec_from_request

logger = logging.getLogger("strictcall.vllm")

# Per-request data for the logits processor (SamplingParams.extra_args, from the request's vllm_xargs).
OPENING_ARG = "strictcall_opening"
BIAS_ARG = "strictcall_bias"


def validation_error(error: APIError) -> VLLMValidationError:
    """strictcall's 400 as vLLM's (vLLM answers it 400 with `param`)."""
    return VLLMValidationError(error.message, parameter=error.param)


class StrictcallToolParser(ToolParser):
    """Tool calls by strictcall's grammars: one instance per request (vLLM makes one per choice when streaming)."""

    supports_required_and_named = False
    structural_tag_model = None

    def __init__(self, tokenizer: Any, tools: list[Any] | None = None):
        super().__init__(tokenizer, tools)
        self.format: ToolCallFormat = model_format(getattr(tokenizer, "chat_template", None))
        self._stream: TurnStream | None = None

    # ----- before generation -----

    def adjust_request(self, request: Any) -> Any:
        if not isinstance(request, ChatCompletionRequest) or not request.tools:
            return request
        try:
            options = strictcall_options(request.model_extra)
            spec = turn_spec_from_request(_turn_body(request), self.format.name)
        except APIError as error:
            raise validation_error(error) from None
        except ValueError as error:
            raise VLLMValidationError(str(error), parameter="strictcall") from None
        if spec is None or options.get("constrained") is False:
            return request
        so = request.structured_outputs
        if so is not None and is_turn_spec(so.structural_tag):
            return request  # already ours (the request object is adjusted once per parser)
        try:
            turn = compile_turn_spec(process_compiler(self.model_tokenizer, self.format.name), spec)
        except APIError as error:
            raise validation_error(error) from None
        for part, index, pointer, keyword in turn.unenforced:
            # strictcall's server also sends these in a response header; vLLM's serving layer has no hook for that.
            field = f"tools[{index}].function.parameters" if part == "tools" else "response_format.json_schema.schema"
            logger.info("strictcall: %s%s: keyword %r is not enforced (the tool is not strict)", field, pointer, keyword)
        request.structured_outputs = StructuredOutputsParams(structural_tag=spec.to_json())
        request.response_format = None
        self._bias(request, spec, options)
        return request

    def _bias(self, request: ChatCompletionRequest, spec: TurnSpec, options: dict[str, Any]) -> None:
        """In `auto` mode, on a turn that answers the user: bias the opening's next token (a logits processor's work)."""
        last = request.messages[-1] if request.messages else {}
        role = last.get("role") if isinstance(last, dict) else getattr(last, "role", None)
        if spec.choice.mode != "auto" or role != "user":
            return
        bias = auto_tool_bias(str(getattr(self.model_tokenizer, "name_or_path", "")), options.get("auto_tool_bias"))
        if not bias:
            return
        opening = self.model_tokenizer.encode(self.format.trigger, add_special_tokens=False)
        request.vllm_xargs = {**(request.vllm_xargs or {}), OPENING_ARG: list(opening), BIAS_ARG: float(bias)}

    # ----- after generation -----

    def _names(self, request: Any) -> frozenset[str]:
        return frozenset(t.function.name for t in (request.tools or []))

    def _constrained(self, request: Any) -> bool:
        so = getattr(request, "structured_outputs", None)
        return so is not None and is_turn_spec(getattr(so, "structural_tag", None))

    def extract_tool_calls(self, model_output: str, request: Any) -> ExtractedToolCallInformation:
        try:
            content, calls = read_turn(self.format, model_output, self._names(request), self._constrained(request))
        except Exception:  # a bug must not turn a finished generation into a 400: the text is returned as it is
            logger.exception("strictcall could not read the tool calls back; returning the text as content")
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
        tool_calls = [ToolCall(id=c.id, type="function", function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
        return ExtractedToolCallInformation(tools_called=bool(tool_calls), tool_calls=tool_calls, content=content or None)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str, previous_token_ids: Sequence[int],
                                     current_token_ids: Sequence[int], delta_token_ids: Sequence[int], request: Any) -> DeltaMessage | None:
        if self._stream is None:
            self._stream = TurnStream(self.format, self._names(request), self._constrained(request))
        try:
            delta = self._stream.feed(delta_text)
        except Exception:
            logger.exception("strictcall could not read the streamed tool calls; sending the text as content")
            return DeltaMessage(content=delta_text) if delta_text else None
        return _delta_message(delta)


def _delta_message(delta: Delta) -> DeltaMessage | None:
    if not delta:
        return None
    calls: list[DeltaToolCall] = []
    for piece in delta.tool_calls:
        last = calls[-1] if calls else None
        if last is not None and last.index == piece.index and piece.id is None and last.function is not None:
            last.function.arguments = (last.function.arguments or "") + piece.arguments  # one entry per call in a delta
        else:
            calls.append(DeltaToolCall(index=piece.index, id=piece.id, type="function" if piece.id else None,
                                       function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments)))
    return DeltaMessage(content=delta.content or None, tool_calls=calls)


def _turn_body(request: ChatCompletionRequest) -> dict[str, Any]:
    """The fields that decide the turn, as OpenAI JSON (vLLM's own models dumped)."""
    so = request.structured_outputs
    return {
        "tools": [{"type": "function", "function": {k: v for k, v in t.function.model_dump().items()
                                                    if k in ("name", "description", "parameters", "strict") and v is not None}}
                  for t in request.tools or []],
        "tool_choice": request.tool_choice if request.tool_choice is None or isinstance(request.tool_choice, str) else request.tool_choice.model_dump(),
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": request.response_format.model_dump(by_alias=True, exclude_none=True) if request.response_format is not None else None,
        "structured_outputs": None if so is None else {k: getattr(so, k) for k in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")},
    }
