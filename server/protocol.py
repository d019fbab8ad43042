"""The OpenAI (and vLLM) request shapes as pydantic models, and their translation into the typed specs the
grammars take (`ToolSpec`, `ToolChoice`, `AnswerSpec`): OpenAI's shapes end here.

Invariant: a request that parses is well-typed field by field; a request that does not gets a 400 whose
`param` is the path of the first bad field (`messages[0].role`, `tools[1].function.name`), in OpenAI's wording.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strictcall.grammars import AnswerSpec, ToolChoice, ToolSpec
from strictcall.server.errors import APIError, bad_request

_ID_ALPHABET = string.ascii_letters + string.digits
# OpenAI's rule for function names.
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def random_id(prefix: str, length: int = 24) -> str:
    """An OpenAI-style id: `call_` + 24 letters and digits."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


# strict: types as OpenAI checks them (`"2"` is not an integer, `true` not a number, `"yes"` not a boolean).
class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Ignore(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionCallIn(_Ignore):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Ignore):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Ignore):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
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
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Forbid):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Forbid):
    """vLLM's `structured_outputs` (and its older `guided_*` fields)."""

    json_: dict[str, Any] | str | bool | None = Field(default=None, alias="json")
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
    # A bias on ending the turn after a complete call (see `EngineRequest.end_bias`); None: the model's profile.
    end_bias: float | None = Field(default=None, ge=-100, le=100)
    # A turn may repeat a call it already made (same name, same arguments); by default it may not.
    allow_repeated_calls: bool = False
    # Tokens that keep the turn completable within max_tokens only; off: the budget may cut a call short.
    close_within_budget: bool | None = None


class GenerationFields(_Forbid):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a 64-bit integer, as OpenAI takes it
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
    guided_json: dict[str, Any] | str | bool | None = None
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


class ToolsFile(_Forbid):
    """What `strictcall compile` reads: an OpenAI `tools` list."""

    tools: list[ToolDefinition]


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
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


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | list[int] | list[list[int]]
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


def validation_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    loc = tuple(first.get("loc", ()))
    alias = {"schema_": "schema", "json_": "json"}
    loc = tuple(alias.get(p, p) if isinstance(p, str) else p for p in loc)
    param = _param_of(loc) or None
    if first.get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if first.get("type") == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    given = first.get("input")
    shown = json.dumps(given, ensure_ascii=False, default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return bad_request(f"Invalid value for '{param}': {first.get('msg')} (got {shown}).", param, "invalid_value")


# Deeper JSON than this is refused before anything walks it (Python's own parsers recurse).
MAX_JSON_DEPTH = 64


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: no NaN or infinite numbers, no lone surrogates, at most MAX_JSON_DEPTH deep.

    Raises:
        APIError: a 400 (`invalid_json`, or `invalid_value` naming the field).
    """
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "it is nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise bad_request(f"We could not parse the JSON body of your request: {reason}. Send a JSON object with Content-Type: application/json.",
                          code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got a JSON {type(body).__name__}", code="invalid_json")
    _check_values(body)
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large for a number (a double holds up to 1.8e308)")
    return value


def _check_values(body: dict[str, Any]) -> None:
    """Depth and strings, walked without recursion: the first bad value is a 400 naming its field."""
    pending: list[tuple[Any, str, int]] = [(body, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"{path or 'the body'} is nested more than {MAX_JSON_DEPTH} levels deep", path or None)
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                name = key if _is_text(key) else ascii(key)[1:-1]  # the error names the key with its escapes
                _check_text(key, f"{path}.{name}" if path else name)
                pending.append((item, f"{path}.{name}" if path else name, depth + 1))
        elif isinstance(value, list):
            pending += [(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, path: str) -> None:
    if not _is_text(text):
        raise bad_request(f"{path} holds a lone UTF-16 surrogate (e.g. \\ud800 without its pair): it is not valid Unicode text", path or None)


def parse_request(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """The request as `model`, or a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise validation_error(error) from None


# ----- OpenAI -> typed specs -----


def tool_specs(tools: list[ToolDefinition] | None, all_strict: bool = False) -> list[ToolSpec]:
    """The request's tools as the grammars' specs (names as OpenAI allows them; every one strict with `all_strict`)."""
    specs = []
    for i, tool in enumerate(tools or []):
        function = tool.function
        if not _TOOL_NAME.fullmatch(function.name):
            raise bad_request(f"tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {function.name!r}",
                              f"tools[{i}].function.name", "invalid_value")
        parameters = function.parameters if function.parameters is not None else {"type": "object", "properties": {}}
        specs.append(ToolSpec(function.name, parameters, all_strict or function.strict is True))
    return specs


def tool_choice(value: Any, names: list[str]) -> ToolChoice:
    """OpenAI's `tool_choice` (`none`, `auto`, `required`, or `{"type": "function", "function": {"name": ...}}`)."""
    if value is None:
        return ToolChoice("auto" if names else "none")
    if value != "none" and not names:
        raise bad_request("tool_choice is only allowed when tools are specified", "tool_choice")
    if value in ("none", "auto", "required"):
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if isinstance(name, str):
            if name not in names:
                raise bad_request(f"tool_choice names function {name!r}, which is not in tools ({', '.join(sorted(names))})", "tool_choice")
            return ToolChoice.named(name)
    raise bad_request(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, "
                      f"got {value!r}", "tool_choice")


def answer_spec(response_format: ResponseFormat | None) -> AnswerSpec | None:
    """OpenAI's `response_format` as the answer's schema (None for text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return AnswerSpec({"type": "object"})
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise bad_request("response_format json_schema needs json_schema.schema", "response_format.json_schema", "missing_required_parameter")
    return AnswerSpec(spec.schema_, spec.strict is True)


@dataclass(frozen=True)
class GuidedSpec:
    """vLLM's output constraint (`guided_*` or `structured_outputs`): kind `json`, `regex` or `choice`."""

    kind: str
    value: Any
    param: str


def guided_spec(req: GenerationFields) -> GuidedSpec | None:
    """The vLLM-style constraint, if any (one at most, and not with a response_format)."""
    found: list[GuidedSpec] = []
    if req.guided_json is not None:
        found.append(GuidedSpec("json", req.guided_json, "guided_json"))
    if req.guided_regex is not None:
        found.append(GuidedSpec("regex", req.guided_regex, "guided_regex"))
    if req.guided_choice is not None:
        found.append(GuidedSpec("choice", req.guided_choice, "guided_choice"))
    if req.guided_grammar is not None:
        raise bad_request("guided_grammar (EBNF/Lark grammars) is not supported; use guided_json, guided_regex or guided_choice",
                          "guided_grammar", "unsupported_parameter")
    so = req.structured_outputs
    if so is not None:
        if so.grammar is not None or so.structural_tag is not None:
            name = "grammar" if so.grammar is not None else "structural_tag"
            raise bad_request(f"structured_outputs.{name} is not supported; use json, regex or choice",
                              f"structured_outputs.{name}", "unsupported_parameter")
        if so.json_ is not None:
            found.append(GuidedSpec("json", so.json_, "structured_outputs.json"))
        if so.regex is not None:
            found.append(GuidedSpec("regex", so.regex, "structured_outputs.regex"))
        if so.choice is not None:
            found.append(GuidedSpec("choice", so.choice, "structured_outputs.choice"))
        if so.json_object:
            found.append(GuidedSpec("json", {"type": "object"}, "structured_outputs.json_object"))
    if len(found) > 1:
        raise bad_request(f"give one output constraint, not {len(found)}: {', '.join(g.param for g in found)}", found[1].param,
                          "conflicting_parameters")
    if found and req.response_format is not None and req.response_format.type != "text":
        raise bad_request(f"{found[0].param} and response_format both constrain the output; give one", found[0].param, "conflicting_parameters")
    if not found:
        return None
    spec = found[0]
    if spec.kind == "json" and isinstance(spec.value, str):
        try:
            return GuidedSpec("json", json.loads(spec.value), spec.param)
        except json.JSONDecodeError as error:
            raise bad_request(f"{spec.param} must be a JSON Schema (an object, or its JSON text): {error}", spec.param) from None
    if spec.kind == "json" and not isinstance(spec.value, (dict, bool)):
        raise bad_request(f"{spec.param} must be a JSON Schema object", spec.param)
    if spec.kind == "choice" and (not spec.value or not all(isinstance(c, str) for c in spec.value)):
        raise bad_request(f"{spec.param} must be a non-empty list of strings", spec.param)
    return spec
