"""One assistant turn's constraint as text that crosses vLLM's process boundaries: built from an OpenAI chat
request in the API process, compiled to a `TurnGrammar` there (to answer a 400 before anything is queued) and
again in the engine core (where the masks are filled).

Why text: vLLM carries a request's constraint to the engine core as `StructuredOutputsParams`, whose
`structural_tag` is a string; a JSON object with the key `strictcall_turn` there is ours, anything else is
vLLM's own and goes to its own backend.

Invariant: `TurnSpec.from_json(spec.to_json()) == spec`, and `compile_turn_spec` builds the same turn from it in
every process (same tools in the same order, same choice, parallel setting and answer format); an input that
cannot be compiled is an `APIError` 400 whose `param` names the request field, as in strictcall's own server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from strictcall.grammars import AnswerSpec, InvalidSchemaError, ToolChoice, ToolGrammarCompiler, ToolSpec, TurnError, TurnGrammar, check_schema
from strictcall.server.errors import APIError, api_error, bad_request
from strictcall.server.protocol import ResponseFormat, ToolDefinition, answer_spec, parse_request, tool_choice, tool_specs

MARKER = "strictcall_turn"
VERSION = 1
# The most bytes of JSON Schema per tool or answer (strictcall serve's --max-schema-bytes default).
MAX_SCHEMA_BYTES = 64 * 1024
MAX_TOOLS = 128


@dataclass(frozen=True)
class TurnSpec:
    """What a turn may write: the tools (in request order), the choice, parallel calls, an answer format, in a format."""

    format: str
    tools: tuple[ToolSpec, ...]
    choice: ToolChoice
    parallel_tool_calls: bool = True
    answer: AnswerSpec | None = None

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def to_json(self) -> str:
        return json.dumps({
            MARKER: VERSION,
            "format": self.format,
            "tools": [{"name": t.name, "parameters": t.parameters, "strict": t.strict} for t in self.tools],
            "choice": {"mode": self.choice.mode, "name": self.choice.name},
            "parallel_tool_calls": self.parallel_tool_calls,
            "answer": None if self.answer is None else {"schema": self.answer.schema, "strict": self.answer.strict},
        }, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TurnSpec:
        """Raises: ValueError: not a turn spec (of this version)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get(MARKER) != VERSION:
            raise ValueError(f"not a strictcall turn spec (version {VERSION}): {text[:80]!r}")
        answer = data.get("answer")
        return cls(
            format=data["format"],
            tools=tuple(ToolSpec(t["name"], t["parameters"], bool(t["strict"])) for t in data["tools"]),
            choice=ToolChoice(data["choice"]["mode"], data["choice"].get("name")),
            parallel_tool_calls=bool(data["parallel_tool_calls"]),
            answer=None if answer is None else AnswerSpec(answer["schema"], bool(answer["strict"])),
        )


def is_turn_spec(text: str | None) -> bool:
    """Whether a `structural_tag` string is ours (cheap: a prefix test before any parsing)."""
    return bool(text) and text.lstrip().startswith('{"' + MARKER + '"')  # type: ignore[union-attr]


class _TurnFields(BaseModel):
    """The fields of a chat request that decide its turn, validated by strictcall's own request models."""

    model_config = ConfigDict(extra="ignore")

    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


def turn_spec_from_request(body: dict[str, Any], format: str) -> TurnSpec | None:
    """The turn of an OpenAI chat request (`tools`, `tool_choice`, `parallel_tool_calls`, `response_format`), or
    None where it offers no tool to call (no tools, or `tool_choice: none`): those stay vLLM's own.

    Args:
        body: the request's fields as JSON values (OpenAI's names; `structured_outputs` as vLLM's, a dict).
        format: the model's tool-call format (`hermes`, `generic`, ...).

    Raises:
        APIError: 400 naming the field (a bad tool, an unknown named tool, a schema too large, a vLLM-style
            output constraint together with tool calls).
    """
    fields: _TurnFields = parse_request(_TurnFields, {k: v for k, v in body.items() if v is not None and k in _TurnFields.model_fields})
    constraints = body.get("structured_outputs") or {}
    tools = tool_specs(fields.tools)
    if len(tools) > MAX_TOOLS:
        raise bad_request(f"{len(tools)} tools were given; at most {MAX_TOOLS} are compiled", "tools", "too_many_tools")
    choice = tool_choice(fields.tool_choice, [t.name for t in tools])
    if not tools or choice.mode == "none":
        return None
    for i, tool in enumerate(tools):
        check_request_schema(tool.parameters, f"tools[{i}].function.parameters")
    constraint = next((name for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag") if constraints.get(name)), None)
    if constraint is not None:
        param = f"structured_outputs.{constraint}"
        raise bad_request(f"{param} constrains the whole answer, so it cannot be combined with tool calls; set tool_choice to 'none' or drop it",
                          param, "conflicting_parameters")
    answer = _answer(fields.response_format)
    parallel = True if fields.parallel_tool_calls is None else fields.parallel_tool_calls
    return TurnSpec(format, tuple(tools), choice, parallel, answer)


def _answer(response_format: ResponseFormat | None) -> AnswerSpec | None:
    """strictcall's own reading of `response_format`, with the schema checked before the engine core compiles it."""
    answer = answer_spec(response_format)
    if answer is not None:
        check_request_schema(answer.schema, "response_format.json_schema.schema")
    return answer


def check_request_schema(schema: Any, param: str) -> None:
    """Within the size limit, and a JSON Schema at all (before the tool prompt or a grammar reads it).

    Raises:
        APIError: 400 naming `param`.
    """
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > MAX_SCHEMA_BYTES:
        raise bad_request(f"{param}: the schema has {size} bytes; at most {MAX_SCHEMA_BYTES} are compiled", param, "schema_too_large")
    try:
        check_schema(schema)
    except InvalidSchemaError as error:
        raise bad_request(f"{param}: {error}", param) from None


def compile_turn_spec(compiler: ToolGrammarCompiler, spec: TurnSpec) -> TurnGrammar:
    """The spec's turn grammar (cached by the compiler).

    Raises:
        APIError: 400 naming the field the schema or name came from.
    """
    try:
        return compiler.compile_turn(list(spec.tools), spec.choice, spec.parallel_tool_calls, spec.answer)
    except TurnError as error:
        raise turn_error(error, spec) from None


def turn_error(error: TurnError, spec: TurnSpec) -> APIError:
    """A turn that cannot be compiled, as a 400 on the request field it came from."""
    if error.part == "tools":
        param = f"tools[{error.index}].function." + ("parameters" if error.cause is not None else "name")
        message = str(error)
        if error.cause is not None and error.index is not None and spec.tools[error.index].strict:
            message += ' (the tool sets "strict": true, so every keyword must be enforced; without it the rest is enforced)'
        return api_error(TurnError(message, error.part, error.index, error.cause), param)
    if error.part == "answer":
        return api_error(error, "response_format.json_schema.schema")
    return api_error(error, "tool_choice")
