"""Tool-call grammars for a turn, composed at run time from per-tool grammars.

A tool's whole call (envelope + `{"name": "<name>", "arguments": <schema>}`) is one `CompiledGrammar`,
compiled once per (schema, format, vocabulary) and cached. A turn (`TurnGrammar`) only names which grammars
may follow which: `prefix call (separator call)* suffix` (the format's literal pieces are grammars of their
own), or in `auto` mode free text (or a `response_format` answer) that may switch to calls. A `TurnMatcher` holds the set of live
configurations (segment, grammar state); its mask is the bitwise OR of theirs, so while the tool name is
still open every offered tool is live and a name that was not offered is impossible.

Invariant: the mask and `accept_token` agree; end of turn is allowed only after a complete answer or a
complete call sequence. Boundaries are exact: a token may end one segment and go on into the next (`}},`
from a call into Mistral's separator; `>` + `\n{"` from free text through the trigger into a call), so the
model can keep its own tokenization across them.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from strictcall.grammars.automaton import DEAD, paused_gc
from strictcall.grammars.compiler import CompiledGrammar, GrammarCompiler
from strictcall.grammars.formats import ToolCallFormat
from strictcall.grammars.json_schema import SchemaRegex, UnsupportedSchemaError, json_schema_to_regex
from strictcall.grammars.masks import allowed_token_ids, pack_token_bitmask, write_bitmask_row
from strictcall.grammars.regex import escape
from strictcall.grammars.vocabulary import Vocabulary

_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MAX_CACHED_MASKS = 4096


class ToolGrammarError(ValueError):
    """A request's tools, tool_choice or response_format cannot be compiled; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolChoice:
    """OpenAI's `tool_choice`, parsed: `none`, `auto`, `required`, or a named function."""

    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None

    @classmethod
    def parse(cls, value: Any) -> ToolChoice:
        """Read `"none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}`.

        Raises:
            ToolGrammarError: any other value.
        """
        if value in ("none", "auto", "required"):
            return cls(value)
        if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
            name = value["function"].get("name")
            if isinstance(name, str):
                return cls("named", name)
        raise ToolGrammarError(
            f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {value!r}",
            "tool_choice",
        )


class _TriggerDfa:
    """The trigger's KMP automaton in the `LazyDfa` interface: state k = the text ends with trigger[:k].

    Completing the trigger is DEAD here: free text cannot contain it (the turn switches to a call instead).
    """

    def __init__(self, trigger: bytes):
        size = len(trigger)
        table = np.zeros((size, 256), dtype=np.int32)
        table[0, trigger[0]] = 1
        fallback = 0
        for j in range(1, size):
            table[j] = table[fallback]
            table[j, trigger[j]] = j + 1
            fallback = int(table[fallback, trigger[j]])
        table[table == size] = DEAD
        self.table = table
        self.trigger = trigger

    def expand(self, state: int) -> np.ndarray:
        return self.table[state]

    def expand_all(self, states: np.ndarray) -> None:
        pass

    def split(self, state: int, data: bytes) -> tuple[int, bytes | None]:
        """Walk `data`: (new state, None) if the trigger does not complete, else (-, bytes after the trigger)."""
        for i, byte in enumerate(data):
            state = int(self.table[state, byte])
            if state == DEAD:
                return DEAD, data[i + 1 :]
        return state, None


class _FreeText:
    """Free text that ends where the trigger appears; per trigger state, the tokens that keep it free (shared
    by every turn of a format, so a turn only checks the few tokens that complete the trigger)."""

    def __init__(self, trigger: str, vocabulary: Vocabulary):
        self.dfa = _TriggerDfa(trigger.encode("utf-8"))
        self.vocabulary = vocabulary
        self._tokens: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def tokens(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(packed mask of the tokens that keep the text free, ids of the tokens that complete the trigger)."""
        cached = self._tokens.get(state)
        if cached is None:
            free, _ = allowed_token_ids(self.dfa, state, self.vocabulary.content_tokens)  # type: ignore[arg-type]
            completing = np.setdiff1d(self.vocabulary.content_tokens.ids, free)
            cached = (pack_token_bitmask(free, self.vocabulary.num_words), completing)
            with self._lock:
                self._tokens[state] = cached
        return cached


# A configuration: (segment, tool name or "", grammar state, number of calls completed before it).
# Segments: "text" (free text; the state is the trigger automaton's), "prefix", "call", "sep", "suffix" (the
# format's pieces around the calls), "answer" (response_format).
Config = tuple[str, str, int, int]


@dataclass(frozen=True)
class _FormatGrammars:
    """What every turn of one format shares: the literal pieces' grammars, free text, constant masks."""

    format: ToolCallFormat
    prefix: CompiledGrammar | None
    separator: CompiledGrammar | None
    suffix: CompiledGrammar | None
    free_text: _FreeText
    eos_bitmask: np.ndarray
    content_bitmask: np.ndarray


class TurnGrammar:
    """The grammars one turn may use and how they follow each other (immutable, cached, shared).

    Attributes:
        calls: per tool name, the grammar of its whole call (envelope included).
        max_calls: at most this many calls (None: no limit).
        allow_text: free text is allowed (auto mode without a response_format, or no tools).
        answer: the response_format grammar, if any.
        unenforced: `(param, JSON pointer, keyword)` for each keyword of a non-strict schema that is not
            enforced (`param` is the request field holding the schema, e.g. `tools[0].function.parameters`).
    """

    def __init__(
        self,
        shared: _FormatGrammars,
        vocabulary: Vocabulary,
        calls: dict[str, CompiledGrammar],
        max_calls: int | None,
        allow_text: bool,
        answer: CompiledGrammar | None,
        unenforced: tuple[tuple[str, str, str], ...] = (),
    ):
        self.format = shared.format
        self.vocabulary = vocabulary
        self.calls = calls
        self.max_calls = max_calls
        self.allow_text = allow_text
        self.answer = answer
        self.unenforced = unenforced
        self._shared = shared
        self._pieces = {"prefix": shared.prefix, "sep": shared.separator, "suffix": shared.suffix}
        self._trailing_separator = not self.format.separator.strip()
        self._masks: OrderedDict[frozenset[Config], np.ndarray] = OrderedDict()
        self._into_call: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def is_unconstrained(self) -> bool:
        """Free text with no calls and no answer format: nothing to mask."""
        return self.allow_text and not self.calls and self.answer is None

    @property
    def eos_bitmask(self) -> np.ndarray:
        return self._shared.eos_bitmask

    def grammar_of(self, config: Config) -> CompiledGrammar:
        segment = config[0]
        if segment == "call":
            return self.calls[config[1]]
        if segment == "answer":
            return self.answer  # type: ignore[return-value]
        return self._pieces[segment]  # type: ignore[return-value]

    def _calls_from(self, num_calls: int, lead: str = "prefix") -> set[Config]:
        """Where a call (or the first one, after the prefix) may start."""
        piece = self._pieces[lead]
        if piece is not None:
            return {(lead, "", piece.start_state, num_calls)}
        return {("call", name, g.start_state, num_calls) for name, g in self.calls.items()}

    def start_configs(self) -> frozenset[Config]:
        configs: set[Config] = set()
        if self.allow_text:
            configs.add(("text", "", 0, 0))
        elif self.calls:
            configs |= self._calls_from(0)
        if self.answer is not None:
            configs.add(("answer", "", self.answer.start_state, 0))
        return self.closure(configs)

    def closure(self, configs: set[Config]) -> frozenset[Config]:
        """Add what may start where a segment is complete (until nothing new is added)."""
        out = set(configs)
        pending = list(configs)
        while pending:
            for follow in self._follow(pending.pop()):
                if follow not in out:
                    out.add(follow)
                    pending.append(follow)
        return frozenset(out)

    def _follow(self, config: Config) -> set[Config]:
        segment, _, state, num_calls = config
        if segment in ("text", "answer", "suffix") or not self.grammar_of(config).is_accepting(state):
            return set()
        if segment in ("prefix", "sep"):
            return {("call", name, g.start_state, num_calls) for name, g in self.calls.items()}
        done = num_calls + 1  # a call is complete
        out: set[Config] = set()
        if self._pieces["suffix"] is not None:
            out.add(("suffix", "", self._pieces["suffix"].start_state, done))  # type: ignore[union-attr]
        if self.max_calls is None or done < self.max_calls:
            out |= self._calls_from(done, lead="sep")
        return out

    def follow_ons(self, config: Config) -> frozenset[Config]:
        """What may start right after `config` (the next call, a separator, the suffix), if it is complete."""
        return self.closure({config}) - {config}

    def may_end(self, configs: frozenset[Config]) -> bool:
        """End of turn is allowed: free text, or a complete answer, suffix, or call (when there is no suffix).

        A whitespace separator may also end the turn: models write `</tool_call>` and a newline, then stop;
        without this, the newline could only begin another call, and a small model repeats its call until
        `max_tokens` (SmolLM2 on BFCL `required`).
        """
        no_suffix = self._pieces["suffix"] is None
        for config in configs:
            segment, _, state, _ = config
            if segment == "text":
                return True
            ends = segment in ("answer", "suffix") or (no_suffix and (segment == "call" or (segment == "sep" and self._trailing_separator)))
            if ends and self.grammar_of(config).is_accepting(state):
                return True
        return False

    def advance(self, configs: frozenset[Config], data: bytes) -> frozenset[Config]:
        """The live configurations after a token's bytes (empty if the token is not allowed)."""
        out: set[Config] = set()
        for config in configs:
            out |= self._advance_one(config, data)
        return self.closure(out)

    def _advance_one(self, config: Config, data: bytes) -> set[Config]:
        segment, name, state, num_calls = config
        if segment == "text":
            if not self.calls:
                return {config}
            new_state, rest = self._shared.free_text.dfa.split(state, data)
            if rest is None:
                return {("text", "", new_state, 0)}
            # The trigger is complete: the calls take over, from the start of the trigger.
            lead = self._shared.free_text.dfa.trigger + rest
            out: set[Config] = set()
            for start in self.closure(self._calls_from(0)):
                out |= self._advance_one(start, lead)
            return out
        grammar = self.grammar_of(config)
        out = set()
        for i, byte in enumerate(data):
            state = int(grammar.dfa.expand(state)[byte])
            if state == DEAD:
                return out
            if i + 1 < len(data) and grammar.is_accepting(state):
                # The token goes on past the end of this segment into what may follow it.
                for follow in self.follow_ons((segment, name, state, num_calls)):
                    out |= self._advance_one(follow, data[i + 1 :])
        out.add((segment, name, state, num_calls))
        return out

    def token_bitmask(self, configs: frozenset[Config]) -> np.ndarray:
        """The OR of every live configuration's mask, with end-of-turn ids where the turn may end."""
        mask = self._masks.get(configs)
        if mask is not None:
            return mask
        with paused_gc():
            rows = []
            crossing: list[int] = []
            for config in configs:
                if config[0] == "text":
                    rows.append(self._text_bitmask(config[2]))
                    continue
                grammar = self.grammar_of(config)
                rows.append(grammar.token_bitmask(config[2]))
                if self.follow_ons_possible(config):
                    crossing += self._crossing_tokens(config, grammar)
            if crossing:
                rows.append(pack_token_bitmask(np.array(crossing, dtype=np.int64), self.vocabulary.num_words))
            eos = self._shared.eos_bitmask
            mask = np.bitwise_or.reduce(np.stack(rows), axis=0) & ~eos
            if self.may_end(configs):
                mask |= eos
        mask.setflags(write=False)
        with self._lock:
            self._masks[configs] = mask
            while len(self._masks) > _MAX_CACHED_MASKS:
                self._masks.popitem(last=False)
        return mask

    def follow_ons_possible(self, config: Config) -> bool:
        """Whether anything can follow this segment (so tokens may cross its end)."""
        segment = config[0]
        if segment in ("prefix", "sep"):
            return True
        return segment == "call" and (self._pieces["suffix"] is not None or self.max_calls is None or config[3] + 1 < self.max_calls)

    def _crossing_tokens(self, config: Config, grammar: CompiledGrammar) -> list[int]:
        """Tokens that finish this segment and go on into what follows it."""
        segment, name, state, num_calls = config
        token_ids, positions = grammar.tokens_through_accepting(state)
        out = []
        for token_id, position in zip(token_ids.tolist(), positions.tolist()):
            data = self.vocabulary.token_bytes[token_id]
            done = (segment, name, grammar.dfa.walk(state, data[:position]), num_calls)  # type: ignore[index]
            follow = self.follow_ons(done)
            if follow and self.advance(follow, data[position:]):  # type: ignore[index]
                out.append(token_id)
        return out

    def _text_bitmask(self, state: int) -> np.ndarray:
        if not self.calls:
            return self._shared.content_bitmask
        cached = self._into_call.get(state)
        if cached is None:
            free, completing = self._shared.free_text.tokens(state)
            text = frozenset({("text", "", state, 0)})
            into_call = [i for i in completing.tolist() if self.advance(text, self.vocabulary.token_bytes[i])]  # type: ignore[arg-type]
            cached = free | pack_token_bitmask(np.array(into_call, dtype=np.int64), self.vocabulary.num_words)
            self._into_call[state] = cached
        return cached

    def forced_bytes(self, configs: frozenset[Config]) -> bytes:
        """The bytes every continuation starts with: the common prefix of the live configurations' forced text."""
        if not configs or self.may_end(configs):
            return b""
        forced = []
        for config in configs:
            if config[0] == "text":
                return b""
            forced.append(self.grammar_of(config).forced_bytes(config[2]))
        common = forced[0]
        for other in forced[1:]:
            n = 0
            while n < min(len(common), len(other)) and common[n] == other[n]:
                n += 1
            common = common[:n]
        return common

    def min_bytes_to_end(self, configs: frozenset[Config]) -> int:
        """Fewest bytes before the turn may end (a lower bound for `max_tokens` checks)."""
        best = None
        suffix = len(self.format.suffix.encode("utf-8"))
        for config in configs:
            if config[0] == "text":
                return 0
            remaining = self.grammar_of(config).min_bytes_to_accept(config[2])
            if config[0] in ("prefix", "sep"):
                remaining += min(g.min_bytes_to_accept(g.start_state) for g in self.calls.values()) + suffix
            elif config[0] == "call":
                remaining += suffix
            best = remaining if best is None else min(best, remaining)
        return 0 if best is None else best


class TurnMatcher:
    """One request's position in a `TurnGrammar`; same interface as `GrammarMatcher`."""

    def __init__(self, turn: TurnGrammar):
        self.turn = turn
        self._history: list[frozenset[Config]] = [turn.start_configs()]
        self._terminated = False

    @property
    def configs(self) -> frozenset[Config]:
        return self._history[-1]

    def is_terminated(self) -> bool:
        return self._terminated

    def is_accepting(self) -> bool:
        return self._terminated or self.turn.may_end(self.configs)

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the turn does not allow it here."""
        if self._terminated:
            return False
        vocabulary = self.turn.vocabulary
        if token_id in vocabulary.eos_token_ids:
            if not self.turn.may_end(self.configs):
                return False
            self._history.append(self.configs)
            self._terminated = True
            return True
        if not 0 <= token_id < vocabulary.vocab_size or not vocabulary.token_bytes[token_id]:
            return False
        return self.accept_bytes(vocabulary.token_bytes[token_id])  # type: ignore[arg-type]

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (forced text); one step for `rollback`."""
        if self._terminated:
            return False
        configs = self.turn.advance(self.configs, data)
        if not configs:
            return False
        self._history.append(configs)
        return True

    def rollback(self, num_steps: int) -> None:
        if not 0 <= num_steps < len(self._history):
            raise ValueError(f"cannot roll back {num_steps} steps: only {len(self._history) - 1} were accepted")
        if num_steps and self._terminated:
            self._terminated = False
        del self._history[len(self._history) - num_steps :]

    def next_token_bitmask(self) -> np.ndarray:
        if self._terminated:
            return self.turn.eos_bitmask
        return self.turn.token_bitmask(self.configs)

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0) -> None:
        """Write the allowed tokens into row `index` of a `(batch, ceil(V/32))` int32 bitmask."""
        write_bitmask_row(bitmask, index, self.next_token_bitmask())

    def forced_bytes(self) -> bytes:
        return b"" if self._terminated else self.turn.forced_bytes(self.configs)

    def min_bytes_to_end(self) -> int:
        return 0 if self._terminated else self.turn.min_bytes_to_end(self.configs)

    def in_tool_call(self) -> bool:
        """Whether the text so far has committed to tool calls (the trigger is complete)."""
        return bool(self.configs) and not any(c[0] in ("text", "answer") for c in self.configs)


class ToolGrammarCompiler:
    """Builds `TurnGrammar`s from OpenAI-shaped requests for one format and vocabulary, with caches.

    Args:
        compiler: the grammar compiler (and cache) of the vocabulary.
        format: the tool-call syntax of the model.
        max_cached_turns: turns kept (a turn holds its masks per configuration set).
    """

    def __init__(self, compiler: GrammarCompiler, format: ToolCallFormat, max_cached_turns: int = 256):
        self.compiler = compiler
        self.format = format
        self.max_cached_turns = max_cached_turns
        self._turns: OrderedDict[str, TurnGrammar] = OrderedDict()
        self._calls: OrderedDict[tuple[str, str, bool], tuple[CompiledGrammar, tuple[tuple[str, str], ...]]] = OrderedDict()
        self._lock = threading.Lock()
        vocabulary = compiler.vocabulary
        content = vocabulary.content_tokens.ids
        self._shared = _FormatGrammars(
            format=format,
            prefix=self._literal(format.prefix),
            separator=self._literal(format.separator),
            suffix=self._literal(format.suffix),
            free_text=_FreeText(format.trigger, vocabulary),
            eos_bitmask=pack_token_bitmask(np.array(vocabulary.eos_token_ids, dtype=np.int64), vocabulary.num_words),
            content_bitmask=pack_token_bitmask(content, vocabulary.num_words),
        )
        # Free text's mask before any trigger byte: paid here, once per format, not by the first auto turn.
        self._shared.free_text.tokens(0)

    def _literal(self, text: str) -> CompiledGrammar | None:
        return self.compiler.compile_regex(escape(text)) if text else None

    def compile_turn(
        self,
        tools: list[dict[str, Any]] | None,
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        response_format: dict[str, Any] | None = None,
    ) -> TurnGrammar:
        """The grammar of one assistant turn, in OpenAI's terms.

        Args:
            tools: OpenAI `tools` (`[{"type": "function", "function": {"name", "parameters", "strict"}}]`).
            tool_choice: `none`, `auto` (default with tools), `required`, or `{"type": "function", ...}`.
            parallel_tool_calls: False allows at most one call.
            response_format: `{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`.

        Raises:
            ToolGrammarError: invalid tools, tool_choice or response_format, or a schema that cannot be
                enforced (the message names the tool and the JSON pointer).
        """
        key = json.dumps([tools, tool_choice, parallel_tool_calls, response_format], ensure_ascii=False, default=str)
        with self._lock:
            turn = self._turns.get(key)
            if turn is not None:
                self._turns.move_to_end(key)
                return turn
        with paused_gc():
            turn = self._build(tools or [], tool_choice, parallel_tool_calls, response_format)
        with self._lock:
            self._turns[key] = turn
            while len(self._turns) > self.max_cached_turns:
                self._turns.popitem(last=False)
        return turn

    def _build(self, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool, response_format: dict[str, Any] | None) -> TurnGrammar:
        functions = _check_tools(tools)
        choice = ToolChoice.parse(tool_choice if tool_choice is not None else ("auto" if functions else "none"))
        if choice.mode != "none" and not functions:
            raise ToolGrammarError(f"tool_choice {tool_choice!r} needs at least one tool in `tools`", "tool_choice")
        if choice.mode == "named":
            if choice.name not in functions:
                raise ToolGrammarError(
                    f"tool_choice names function {choice.name!r}, which is not in tools ({', '.join(functions)})", "tool_choice"
                )
            functions = {choice.name: functions[choice.name]}
        answer = self._answer_grammar(response_format)
        offered = {} if choice.mode == "none" else functions
        calls: dict[str, CompiledGrammar] = {}
        unenforced: list[tuple[str, str, str]] = []
        for name, (i, function) in offered.items():
            calls[name], skipped = self._call_grammar(i, function)
            unenforced += [(f"tools[{i}].function.parameters", pointer, keyword) for pointer, keyword in skipped]
        if answer is not None:
            unenforced += [("response_format.json_schema.schema", pointer, keyword) for pointer, keyword in answer.unenforced]
        max_calls = 1 if choice.mode == "named" or not parallel else None
        allow_text = choice.mode in ("none", "auto") and answer is None
        return TurnGrammar(self._shared, self.compiler.vocabulary, calls, max_calls, allow_text, answer, tuple(unenforced))

    def _call_grammar(self, index: int, function: dict[str, Any]) -> tuple[CompiledGrammar, tuple[tuple[str, str], ...]]:
        """The call's grammar and the (pointer, keyword) pairs of its schema it does not enforce (non-strict)."""
        name = function["name"]
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        strict = function.get("strict") is True
        key = (name, json.dumps(parameters, ensure_ascii=False), strict)
        with self._lock:
            entry = self._calls.get(key)
            if entry is not None:
                self._calls.move_to_end(key)
                return entry
        try:
            arguments = _arguments_regex(key[1], strict)
            entry = (self.compiler.compile_regex(self.format.call_regex(name, arguments.regex)), arguments.unenforced)
        except UnsupportedSchemaError as error:
            message = str(error).replace("pass strict=False", 'set "strict": false on the tool')
            raise ToolGrammarError(f"tool {name!r}, parameters {message}", f"tools[{index}].function.parameters") from error
        except ValueError as error:
            raise ToolGrammarError(f"tool {name!r}: {error}", f"tools[{index}].function.parameters") from error
        with self._lock:
            self._calls[key] = entry
            while len(self._calls) > self.compiler.limits.max_cached_grammars:
                self._calls.popitem(last=False)
        return entry

    def _answer_grammar(self, response_format: dict[str, Any] | None) -> CompiledGrammar | None:
        if response_format is None or response_format.get("type", "text") == "text":
            return None
        kind = response_format.get("type")
        try:
            if kind == "json_object":
                return self.compiler.compile_json_schema({"type": "object"})
            if kind == "json_schema":
                spec = response_format.get("json_schema")
                if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
                    raise ToolGrammarError("response_format.json_schema must be {\"name\": ..., \"schema\": {...}}", "response_format.json_schema")
                return self.compiler.compile_json_schema(spec.get("schema", {}), strict=spec.get("strict") is True)
        except ToolGrammarError:
            raise
        except ValueError as error:
            message = str(error).replace("pass strict=False", 'set "strict": false in response_format.json_schema')
            raise ToolGrammarError(f"response_format schema: {message}", "response_format.json_schema.schema") from error
        raise ToolGrammarError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}", "response_format.type")


@lru_cache(maxsize=4096)
def _arguments_regex(parameters_json: str, strict: bool) -> SchemaRegex:
    # Keyed by the schema's JSON text (key order kept: it is the order properties are generated in).
    return json_schema_to_regex(json.loads(parameters_json), strict=strict)


def _check_tools(tools: list[dict[str, Any]]) -> dict[str, tuple[int, dict[str, Any]]]:
    functions: dict[str, tuple[int, dict[str, Any]]] = {}
    if not isinstance(tools, list):
        raise ToolGrammarError("tools must be a list of {\"type\": \"function\", \"function\": {...}}", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolGrammarError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}", f"tools[{i}]")
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ToolGrammarError(f"tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {name!r}", f"tools[{i}].function.name")
        if name in functions:
            raise ToolGrammarError(f"tools[{i}]: function name {name!r} is given twice", f"tools[{i}].function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ToolGrammarError(f"tools[{i}].function.parameters must be a JSON Schema object", f"tools[{i}].function.parameters")
        functions[name] = (i, function)
    return functions
