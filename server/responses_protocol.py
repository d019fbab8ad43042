"""The OpenAI Responses API request (`POST /v1/responses`) as pydantic models, and its translation into the chat
completion request the rest of the server already plans, prompts and parses.

Why a translation: a Responses request is a chat turn in another wire shape (input items for messages, flat
function tools, `text.format` for `response_format`, `max_output_tokens` for `max_tokens`). Read into a
`ChatCompletionRequest`, it takes the same checks, prompt, budget, sampling and compiled turn as chat, so the
two routes cannot drift apart.

Invariants: every field is either enforced, translated, documented as accepted-and-ignored, or a 400 naming it
(built-in tools, `background`, `conversation`, non-text content, ...): never silently dropped. Every error the
chat path raises for a translated request names the Responses field it came from (`ChatTranslation.rename`):
`tools[1].function.parameters` is `tools[1].parameters`, `messages[3].content` is `input[2].content`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strictcall.server.errors import APIError, bad_request
from strictcall.server.protocol import StrictcallOptions, validation_error

# Input item types of OpenAI's that name a built-in tool's call or output, or state this server does not keep.
_UNSUPPORTED_ITEMS = {"item_reference": "pass the items themselves, or continue with previous_response_id",
                      "reasoning": "this server runs no reasoning models"}
_TEXT_PARTS = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


# strict, as the chat models: types as OpenAI checks them (`"2"` is not an integer).
class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Ignore(BaseModel):
    """Items a client echoes back from an earlier output carry fields (`id`, `status`, `annotations`) that say
    nothing to the next turn."""

    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionTool(_Forbid):
    """A function tool in the Responses shape (no `function` wrapper). `strict` defaults to true, as OpenAI's."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Forbid):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Forbid):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted and ignored: a hint for OpenAI's models


class Reasoning(_Forbid):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesStreamOptions(_Forbid):
    include_obfuscation: bool | None = None  # accepted and ignored: this server adds no obfuscation padding

    @property
    def include_usage(self) -> bool:
        """The chat route's option, which the shared route code reads: usage is always in `response.completed`."""
        return False


class MessageItem(_Ignore):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class FunctionCallItem(_Ignore):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Ignore):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]


_ITEMS: dict[str, type[BaseModel]] = {"message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem}


class ResponsesRequest(_Forbid):
    """`POST /v1/responses`. Fields OpenAI defines that this server does not serve are named here so that they
    get a clear 400 (`unsupported_fields`); any other unknown field is an `unknown_parameter` 400."""

    model: str
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    strictcall: StrictcallOptions | None = None
    # vLLM-style extras, as on chat completions
    seed: int | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # accepted and ignored: they change nothing on this server (max_tool_calls bounds built-in tools, which it has none of)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    # OpenAI's, refused unless unset or at their default (`unsupported_fields`)
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    context_management: Any = None
    moderation: Any = None


def unsupported_fields(req: ResponsesRequest) -> None:
    """A 400 for the first OpenAI field this server does not serve (set to anything but its default)."""
    refused = [
        ("background", bool(req.background), "background responses are not supported; leave background unset or false"),
        ("conversation", req.conversation is not None, "conversations are not supported; continue with previous_response_id"),
        ("prompt", req.prompt is not None, "prompt templates are not supported; send input and instructions"),
        ("include", bool(req.include), f"include {req.include!r} is not supported (no built-in tools, reasoning or logprobs here)"),
        ("top_logprobs", bool(req.top_logprobs), "logprobs are not supported on /v1/responses; use /v1/chat/completions"),
        ("reasoning.effort", req.reasoning is not None and req.reasoning.effort not in (None, "none"),
         "this model does not reason; leave reasoning unset (or effort 'none')"),
        ("reasoning.summary", req.reasoning is not None and (req.reasoning.summary or req.reasoning.generate_summary) is not None,
         "this model does not reason, so there is no reasoning summary"),
        ("truncation", req.truncation == "auto", "truncation 'auto' is not supported: an input beyond the context is a 400 ('disabled')"),
        ("context_management", req.context_management is not None, "context management (compaction) is not supported"),
        ("moderation", req.moderation is not None, "moderation is not available on this server"),
    ]
    for param, given, why in refused:
        if given:
            raise bad_request(f"Unsupported parameter: '{param}': {why}.", param, "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if req.metadata is not None:
        _check_metadata(req.metadata)


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > METADATA_KEYS:
        raise bad_request(f"metadata takes at most {METADATA_KEYS} keys, got {len(metadata)}", "metadata")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise bad_request(f"metadata keys have at most {METADATA_KEY_CHARS} characters, got {len(key)} in {key[:20]!r}...", "metadata")
        if len(value) > METADATA_VALUE_CHARS:
            raise bad_request(f"metadata values have at most {METADATA_VALUE_CHARS} characters, got {len(value)} for {key!r}",
                              f"metadata.{key}")


def _validate(model: type[BaseModel], value: Any, prefix: str) -> Any:
    """`model.model_validate(value)`, its 400 naming the field under `prefix` (`input[2].call_id`)."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        relative = validation_error(error)
        param = prefix + ("." + relative.param if relative.param else "")
        message = relative.message.replace(f"'{relative.param}'", f"'{param}'").replace(f"supplied: {relative.param}", f"supplied: {param}")
        raise bad_request(message, param, relative.code) from None


def function_tools(tools: list[Any] | None) -> list[FunctionTool]:
    """The request's tools, each a function tool (a built-in tool type is a 400 naming it)."""
    out = []
    for i, tool in enumerate(tools or []):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_request(f"{param} must be an object (a function tool)", param)
        kind = tool.get("type")
        if kind != "function":
            raise bad_request(f"tools[{i}]: tools of type {kind!r} are not supported; this server serves function tools "
                              '({"type": "function", "name": ..., "parameters": ...}), no built-in tools', f"{param}.type", "unsupported_value")
        if "function" in tool:
            raise bad_request(f"{param}: the Responses API takes function tools flat ({{\"type\": \"function\", \"name\": ..., \"parameters\": ...}}), "
                              "not wrapped in \"function\" as chat completions do", f"{param}.function", "unknown_parameter")
        out.append(_validate(FunctionTool, tool, param))
    return out


def input_items(value: str | list[Any] | None, param: str = "input") -> list[dict[str, Any]]:
    """`input` as canonical items: `message` (role, content as text), `function_call`, `function_call_output`
    (output as text). A string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [_canonical_item(item, f"{param}[{i}]") for i, item in enumerate(value)]


def _canonical_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise bad_request(f"{param} must be an input item (an object)", param)
    kind = item.get("type", "message" if "role" in item else None)
    if kind is None:
        raise bad_request(f"Missing required parameter: '{param}.type'.", f"{param}.type", "missing_required_parameter")
    if kind not in _ITEMS:
        why = _UNSUPPORTED_ITEMS.get(kind, "this server serves messages, function_call and function_call_output items")
        raise bad_request(f"{param}: input items of type {kind!r} are not supported; {why}", f"{param}.type", "unsupported_value")
    parsed = _validate(_ITEMS[kind], item, param)
    if isinstance(parsed, MessageItem):
        return {"type": "message", "role": parsed.role, "content": _text(parsed.content, f"{param}.content")}
    if isinstance(parsed, FunctionCallItem):
        return {"type": "function_call", "call_id": parsed.call_id, "name": parsed.name, "arguments": parsed.arguments}
    return {"type": "function_call_output", "call_id": parsed.call_id, "output": _text(parsed.output, f"{param}.output")}


def _text(content: str | list[dict[str, Any]], param: str) -> str:
    """Content as text: a string, or text parts (`input_text`, `output_text`, `refusal`) joined by newlines."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None or not isinstance(part.get(key), str):
            raise bad_request(f"{param}[{j}]: content parts of type {kind!r} are not supported; this server reads text only "
                              '({"type": "input_text", "text": ...})', f"{param}[{j}].type", "invalid_value")
        texts.append(part[key])
    return "\n".join(texts)


def output_as_input(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored response's output items as the canonical input items of the turn that follows it."""
    items = []
    for item in output:
        if item["type"] == "message":
            items.append({"type": "message", "role": "assistant", "content": "".join(p.get("text", "") for p in item["content"])})
        elif item["type"] == "function_call":
            items.append({"type": "function_call", "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]})
    return items


@dataclass
class ChatTranslation:
    """A Responses request as a chat completion request body, and where each chat message came from.

    Attributes:
        body: the chat completion request (validated by the caller as a `ChatCompletionRequest`).
        message_params: per chat message, the Responses field it came from (`instructions`, `input[2]`,
            `previous_response_id` for the turns of earlier responses).
        call_params: per chat message, the field of each of its tool calls (`input[3]`).
        tool_output: per chat message, whether it is a `function_call_output` (its `content` is `output`).
    """

    body: dict[str, Any]
    message_params: list[str] = field(default_factory=list)
    call_params: list[list[str]] = field(default_factory=list)
    tool_output: list[bool] = field(default_factory=list)

    def rename(self, error: APIError) -> APIError:
        """The chat path's error, naming the Responses field (in `param` and in the message)."""
        if error.param is None:
            return error
        param = self.param(error.param)
        message = error.message.replace(error.param, param) if any(c in error.param for c in "[._") else error.message
        for chat, ours in _RENAMED_WORDS:
            message = re.sub(chat, ours, message)
        return APIError(error.status, message, param=param, code=error.code, type=error.type)

    def param(self, chat_param: str) -> str:
        """The Responses field of a chat request field."""
        match = re.match(r"messages\[(\d+)\](.*)", chat_param)
        if match is None:
            for chat, ours in _RENAMED_PARAMS:
                if re.match(chat, chat_param):
                    return re.sub(chat, ours, chat_param, count=1)
            return chat_param
        i, rest = int(match.group(1)), match.group(2)
        origin = self.message_params[i] if i < len(self.message_params) else "input"
        if origin in ("instructions", "previous_response_id"):
            return origin
        call = re.match(r"\.tool_calls\[(\d+)\]\.function(.*)", rest)
        if call is not None and int(call.group(1)) < len(self.call_params[i]):
            return self.call_params[i][int(call.group(1))] + call.group(2)
        if rest.startswith(".tool_call_id"):
            return origin + ".call_id"
        if rest.startswith(".content") and self.tool_output[i]:
            return origin + ".output" + rest[len(".content"):]
        return origin + rest


_RENAMED_PARAMS = [(r"messages$", "input"), (r"tools\[(\d+)\]\.function", r"tools[\1]"), (r"response_format\.json_schema", "text.format"),
                   (r"response_format", "text.format"), (r"max_tokens|max_completion_tokens", "max_output_tokens")]
_RENAMED_WORDS = [(r"\btools\[(\d+)\]\.function\.", r"tools[\1]."), (r"\bresponse_format\.json_schema\.", "text.format."),
                  (r"\bresponse_format\b", "text.format"), (r"\bmax_tokens\b", "max_output_tokens")]


def to_chat(req: ResponsesRequest, tools: list[FunctionTool], history: list[dict[str, Any]], items: list[dict[str, Any]]) -> ChatTranslation:
    """The chat completion request of a Responses request: `instructions` as the first system message, then the
    earlier responses' turns (`history`), then `input`; consecutive assistant items (a message and its calls)
    make one assistant message, as chat completions write them."""
    out = ChatTranslation(body={})
    messages: list[dict[str, Any]] = []

    def add(message: dict[str, Any], param: str, tool_output: bool = False) -> None:
        messages.append(message)
        out.message_params.append(param)
        out.call_params.append([])
        out.tool_output.append(tool_output)

    if req.instructions is not None:
        add({"role": "system", "content": req.instructions}, "instructions")
    sources = [(item, "previous_response_id") for item in history] + [(item, f"input[{i}]") for i, item in enumerate(items)]
    for item, param in sources:
        if item["type"] == "message":
            add({"role": item["role"], "content": item["content"]}, param)
        elif item["type"] == "function_call_output":
            add({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}, param, tool_output=True)
        else:
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or out.tool_output[-1]:
                add({"role": "assistant", "content": None}, param)
            messages[-1].setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}})
            out.call_params[-1].append(param)
    out.body = _chat_fields(req, tools, messages)
    return out


def _chat_fields(req: ResponsesRequest, tools: list[FunctionTool], messages: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": bool(req.stream)}
    if tools:
        body["tools"] = [{"type": "function", "function": {
            k: v for k, v in {"name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict is not False}.items()
            if v is not None}} for t in tools]
    choice = _chat_tool_choice(req.tool_choice)
    if not tools and choice in ("auto", "none"):
        choice = None  # a response states `auto` when it offered no tools; a client may send it back as it is
    fmt = _text_format(req)
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in {"name": fmt.name, "description": fmt.description, "schema": fmt.schema_, "strict": fmt.strict}.items() if v is not None}}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    for name, value in (("tool_choice", choice), ("parallel_tool_calls", req.parallel_tool_calls), ("max_tokens", req.max_output_tokens),
                        ("temperature", req.temperature), ("top_p", req.top_p), ("seed", req.seed), ("top_k", req.top_k),
                        ("min_p", req.min_p), ("strictcall", req.strictcall.model_dump(exclude_none=True) if req.strictcall else None)):
        if value is not None:
            body[name] = value
    return body


def _chat_tool_choice(value: str | dict[str, Any] | None) -> Any:
    """`tool_choice` in the chat shape: `none`, `auto`, `required`, or `{"type": "function", "name": ...}`."""
    if value is None or value in ("none", "auto", "required"):
        return value  # the chat path checks that tools were given
    if isinstance(value, str):
        raise bad_request(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"name\": ...}}, got {value!r}",
                          "tool_choice")
    kind = value.get("type")
    if kind == "function" and isinstance(value.get("name"), str) and set(value) == {"type", "name"}:
        return {"type": "function", "function": {"name": value["name"]}}
    if kind == "function":
        raise bad_request('tool_choice names a function as {"type": "function", "name": ...}, got ' + repr(value)[:120], "tool_choice")
    if kind == "allowed_tools":
        raise bad_request("tool_choice 'allowed_tools' is not supported; offer only the tools allowed, with tool_choice auto or required",
                          "tool_choice.type", "unsupported_value")
    raise bad_request(f"tool_choice of type {kind!r} is not supported: this server has no built-in tools; use 'none', 'auto', 'required' "
                      'or {"type": "function", "name": ...}', "tool_choice.type", "unsupported_value")


def _text_format(req: ResponsesRequest) -> TextFormat | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "json_schema":
        if fmt is not None and fmt.schema_ is None:
            raise bad_request("Missing required parameter: 'text.format.schema'.", "text.format.schema", "missing_required_parameter")
        return fmt
    for name in ("name", "description", "schema_", "strict"):
        if getattr(fmt, name) is not None:
            name = name.rstrip("_")
            raise bad_request(f"text.format.{name} is only allowed with type 'json_schema', not {fmt.type!r}", f"text.format.{name}",
                              "unknown_parameter")
    return fmt


def tool_choice_echo(req: ResponsesRequest) -> Any:
    """`tool_choice` as a response states it (OpenAI's default: `auto`)."""
    return "auto" if req.tool_choice is None else req.tool_choice


def tools_echo(tools: list[FunctionTool]) -> list[dict[str, Any]]:
    """The tools as a response states them (`strict` as applied: true unless the tool says false)."""
    return [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict is not False}
            for t in tools]


def text_echo(req: ResponsesRequest) -> dict[str, Any]:
    """`text` as a response states it (OpenAI's default: plain text)."""
    if req.text is None or req.text.format is None:
        out: dict[str, Any] = {"format": {"type": "text"}}
    else:
        out = {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
    if req.text is not None and req.text.verbosity is not None:
        out["verbosity"] = req.text.verbosity
    return out
