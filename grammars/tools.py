"""Tools, tool choice and answer format as typed specs, and the compiler that turns them into `TurnGrammar`s.

A tool's whole call is one `CompiledGrammar` per (name, schema, strictness, format, vocabulary), cached; a turn
is composed from the call grammars of the tools it offers (`turn.py`), cached by its spec. Nothing here knows a
wire protocol: the server reads OpenAI's (or vLLM's) request shapes into these specs, and maps a `TurnError`'s
`part` and `index` back to its own request fields.

Invariant: a turn offers exactly the tools of its spec (one with a named choice, none with `none`), each call
grammar enforces its tool's schema (every keyword for a strict tool; for a non-strict one, every keyword it
can, the rest listed in `TurnGrammar.unenforced`), and at most one call when parallel calls are off.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from strictcall.grammars.automaton import paused_gc
from strictcall.grammars.cache import LruCache
from strictcall.grammars.compiler import CompiledGrammar, GrammarCompiler
from strictcall.grammars.errors import GrammarError, TurnError
from strictcall.grammars.formats import ToolCallFormat
from strictcall.grammars.json_schema import SchemaRegex, json_schema_to_regex
from strictcall.grammars.regex import escape, grammar_text
from strictcall.grammars.turn import FormatGrammars, FreeText, TurnGrammar, Unenforced

_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    """One tool a turn may call.

    Attributes:
        name: the name the model writes (any string; JSON escapes apply).
        parameters: the JSON Schema of its arguments.
        strict: every keyword must be enforced (else a `TurnError`); otherwise the rest is enforced and
            what is not is reported in `TurnGrammar.unenforced`.
    """

    name: str
    parameters: dict[str, Any] | bool = field(default_factory=lambda: dict(_NO_PARAMETERS))
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """Whether and which tools a turn calls: `none` (free text only), `auto` (free text or calls), `required`
    (at least one call), or `named` (exactly one call of `name`)."""

    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None

    @classmethod
    def named(cls, name: str) -> ToolChoice:
        return cls("named", name)


@dataclass(frozen=True)
class AnswerSpec:
    """The format a turn's text answer must follow (OpenAI's `response_format` with a schema).

    Attributes:
        schema: the answer's JSON Schema (`{"type": "object"}` for any JSON object).
        strict: every keyword must be enforced, as for a strict tool.
    """

    schema: dict[str, Any] | bool
    strict: bool = False


class ToolGrammarCompiler:
    """Builds `TurnGrammar`s for one format and vocabulary, caching call grammars and turns.

    Args:
        compiler: the grammar compiler (and cache) of the vocabulary.
        format: the tool-call syntax of the model.
        max_cached_turns: turns kept (a turn holds its masks per configuration set).
    """

    def __init__(self, compiler: GrammarCompiler, format: ToolCallFormat, max_cached_turns: int = 256):
        self.compiler = compiler
        self.format = format
        self._turns: LruCache[TurnGrammar] = LruCache(max_cached_turns)
        compiler.budget.register(self._turns, first=True)  # turns hold the most masks: dropped before grammars
        # Each tool's arguments regex (or why its schema cannot be compiled), by schema text; the regexes can be
        # long (up to SchemaOptions.max_regex_chars), so the cache is bounded in bytes too.
        self._arguments: LruCache[SchemaRegex | GrammarError] = LruCache(compiler.limits.max_cached_grammars, max_bytes=64 << 20)
        self._shared = FormatGrammars(
            format=format,
            prefix=self._literal(format.prefix),
            separator=self._literal(format.separator),
            suffix=self._literal(format.suffix),
            free_text=FreeText(format.trigger, compiler.vocabulary),
        )
        # Free text's mask before any trigger byte: paid here, once per format, not by the first auto turn.
        self._shared.free_text.tokens(0)

    def _literal(self, text: str) -> CompiledGrammar | None:
        return self.compiler.compile_regex(escape(text)) if text else None

    def compile_turn(self, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice | str | None = None, parallel_tool_calls: bool = True,
                     answer: AnswerSpec | None = None, distinct_calls: bool = True) -> TurnGrammar:
        """The grammar of one assistant turn.

        Args:
            tools: the tools offered (names unique).
            tool_choice: a `ToolChoice`, or its mode as a string; None: `auto` with tools, else `none`.
            parallel_tool_calls: False allows at most one call.
            answer: the format a text answer must follow (then free text is not allowed).
            distinct_calls: no call may equal an earlier one of the same turn (same name and arguments).

        Raises:
            TurnError: the choice names no offered tool or needs tools, a name is given twice, or a schema
                cannot be enforced (`part` and `index` say which input; `cause` holds the schema's error).
        """
        choice = _choice(tool_choice, bool(tools))
        key = turn_key(tools, choice, parallel_tool_calls, answer, distinct_calls)
        turn = self._turns.get(key)
        if turn is None:
            with paused_gc():
                turn = self._build(list(tools), choice, parallel_tool_calls, answer, distinct_calls)
            self._turns.put(key, turn)
        return turn

    def cached_turn(self, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice | str | None = None, parallel_tool_calls: bool = True,
                    answer: AnswerSpec | None = None, distinct_calls: bool = True) -> TurnGrammar | None:
        """The turn if it is compiled already (a lookup: callers skip the compile queue), else None."""
        try:
            choice = _choice(tool_choice, bool(tools))
        except TurnError:
            return None
        return self._turns.get(turn_key(tools, choice, parallel_tool_calls, answer, distinct_calls))

    def _build(self, tools: list[ToolSpec], choice: ToolChoice, parallel: bool, answer_spec: AnswerSpec | None, distinct: bool) -> TurnGrammar:
        indexes: dict[str, int] = {}
        for i, tool in enumerate(tools):
            if tool.name in indexes:
                raise TurnError(f"tool name {tool.name!r} is given twice (tools {indexes[tool.name]} and {i})", "tools", i)
            indexes[tool.name] = i
        if choice.mode != "none" and not tools:
            raise TurnError(f"tool choice {choice.mode!r} needs at least one tool", "tool_choice")
        if choice.mode == "named" and (choice.name or "") not in indexes:
            raise TurnError(f"the tool choice names {choice.name!r}, which is not among the tools ({', '.join(indexes)})", "tool_choice")
        named = choice.name or ""
        offered = {} if choice.mode == "none" else {named: indexes[named]} if choice.mode == "named" else indexes
        calls: dict[str, CompiledGrammar] = {}
        unenforced: list[Unenforced] = []
        for name, i in offered.items():
            calls[name], skipped = self._call_grammar(i, tools[i])
            unenforced += [("tools", i, pointer, keyword) for pointer, keyword in skipped]
        answer = None if answer_spec is None else self._answer_grammar(answer_spec)
        if answer is not None:
            unenforced += [("answer", None, pointer, keyword) for pointer, keyword in answer.unenforced]
        max_calls = 1 if choice.mode == "named" or not parallel else None
        allow_text = choice.mode in ("none", "auto") and answer is None
        return TurnGrammar(self._shared, self.compiler.vocabulary, calls, max_calls, allow_text, answer, tuple(unenforced), self.compiler.budget,
                           distinct)

    def _call_grammar(self, index: int, tool: ToolSpec) -> tuple[CompiledGrammar, tuple[tuple[str, str], ...]]:
        """The call's grammar and the (pointer, keyword) pairs of its schema it does not enforce (non-strict)."""
        key = (json.dumps(tool.parameters, ensure_ascii=False), tool.strict)
        arguments = self._arguments.get(key)
        if arguments is None:
            try:
                arguments = json_schema_to_regex(tool.parameters, strict=tool.strict)
            except GrammarError as error:  # cached like a result: the same schema fails the same way
                arguments = error
            self._arguments.put(key, arguments, len(arguments.text) if isinstance(arguments, SchemaRegex) else 0)
        try:
            if isinstance(arguments, GrammarError):
                raise arguments
            call = grammar_text(self.format.call_regex(tool.name, arguments.regex), arguments.rules)
            return self.compiler.compile_regex(call), arguments.unenforced
        except GrammarError as error:
            raise TurnError(f"tool {tool.name!r}, parameters {error}", "tools", index, error) from error

    def _answer_grammar(self, answer: AnswerSpec) -> CompiledGrammar:
        try:
            return self.compiler.compile_json_schema(answer.schema, strict=answer.strict)
        except GrammarError as error:
            raise TurnError(f"answer schema: {error}", "answer", cause=error) from error


def turn_key(tools: Sequence[ToolSpec], choice: ToolChoice, parallel: bool, answer: AnswerSpec | None, distinct_calls: bool = True) -> str:
    """What identifies a turn: equal keys, equal grammars."""
    return json.dumps([[(t.name, t.parameters, t.strict) for t in tools], [choice.mode, choice.name], parallel,
                       None if answer is None else [answer.schema, answer.strict], distinct_calls], ensure_ascii=False)


def _choice(value: ToolChoice | str | None, has_tools: bool) -> ToolChoice:
    if isinstance(value, ToolChoice):
        return value
    if value is None:
        return ToolChoice("auto" if has_tools else "none")
    modes: dict[str, ToolChoice] = {"none": ToolChoice("none"), "auto": ToolChoice("auto"), "required": ToolChoice("required")}
    if not isinstance(value, str) or value not in modes:
        raise TurnError(f"tool choice must be 'none', 'auto', 'required' or ToolChoice.named(name), got {value!r}", "tool_choice")
    return modes[value]
