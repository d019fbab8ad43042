"""Generated text -> OpenAI `content` and `tool_calls`, streamed or not.

Invariant: the non-streamed message is what the streamed deltas add up to, because both come from the same
incremental `OutputParser` (the non-streamed path feeds it the whole text at once): the content deltas
concatenate to `content`, and each call's `arguments` fragments concatenate to its `arguments`, which is the
exact JSON text the model wrote. A call is `complete` only when its closing syntax was generated.

Two parsing modes. Constrained (the grammar was on): the text after the format's trigger follows the format
exactly, so calls stream as they are written (the name once, then argument fragments). Unconstrained (the
A/B switch, `strictcall.constrained: false`): the text after the trigger is held to the end and parsed
leniently, the way other servers parse tool calls; a call that does not parse stays in `content`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from strictcall.grammars import ToolCallFormat
from strictcall.server.protocol import random_id


@dataclass
class ToolCallDelta:
    """A piece of one call: the first piece of a call has `id` and `name`, later ones only `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """New output of one choice: content text, then tool-call pieces, in generation order."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)

    def extend(self, other: Delta) -> None:
        self.content += other.content
        for piece in other.tool_calls:
            last = self.tool_calls[-1] if self.tool_calls else None
            if last is not None and last.index == piece.index and piece.id is None:
                last.arguments += piece.arguments
            else:
                self.tool_calls.append(ToolCallDelta(piece.index, piece.id, piece.name, piece.arguments))


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str
    is_complete: bool = False


class _JsonValueScanner:
    """Finds where one JSON value ends in text that arrives in pieces (strings, escapes, nesting)."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.in_string = False
        self.escaped = False
        self.literal = False  # a top-level number or true/false/null
        self.done = False

    def scan(self, text: str) -> int:
        """How many characters of `text` belong to the value (all of them unless it ends inside)."""
        for i, ch in enumerate(text):
            if not self.started:
                if ch in " \t\r\n":
                    continue
                self.started = True
                if ch in "{[":
                    self.depth = 1
                elif ch == '"':
                    self.in_string = True
                else:
                    self.literal = True
                continue
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.done = True
                        return i + 1
            elif self.literal:
                if not (ch.isalnum() or ch in "+-."):
                    self.done = True
                    return i
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)


_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)


class OutputParser:
    """Turns one choice's generated text, fed in pieces, into content and tool-call deltas.

    Args:
        format: the model's tool-call syntax.
        parse_tools: whether this turn may call tools (False: everything is content).
        constrained: whether a grammar enforced the syntax (streams calls as they come); otherwise calls are
            parsed leniently at the end.
        tool_names: the offered tools; in constrained mode a call head naming another tool is content (a
            `response_format` answer that happens to start like a call).
        new_id: makes call ids (`call_...`).
    """

    def __init__(self, format: ToolCallFormat, *, parse_tools: bool, constrained: bool, tool_names: frozenset[str] | None = None,
                 new_id: Callable[[], str] = lambda: random_id("call_")):
        self.format = format
        self.parse_tools = parse_tools
        self.constrained = constrained
        self.tool_names = tool_names
        self.new_id = new_id
        self.calls: list[ParsedCall] = []
        self.content = ""
        self._state = "text" if parse_tools else "content"
        self._buffer = ""
        self._scanner: _JsonValueScanner | None = None
        self._has_text = False  # content other than whitespace was sent
        self._pending_space = ""
        self._finished = False

    @property
    def has_complete_calls(self) -> bool:
        """At least one call, and every call complete."""
        return bool(self.calls) and all(c.is_complete for c in self.calls)

    def feed(self, text: str) -> Delta:
        """Add generated text; returns what can be sent now."""
        self._buffer += text
        out = Delta()
        while self._step(out):
            pass
        self._record(out)
        return out

    def finish(self) -> Delta:
        """The end of the output: send what was held back (an incomplete call head is dropped)."""
        out = Delta()
        if self._finished:
            return out
        self._finished = True
        buffer, self._buffer = self._buffer, ""
        if self._state in ("text", "content"):
            self._content(out, buffer, final=True)
        elif self._state == "raw":
            content, calls = parse_tool_calls_leniently(self.format, buffer)
            self._content(out, content, final=True)
            for name, arguments in calls:
                index = len(self.calls)
                call = ParsedCall(self.new_id(), name, "", is_complete=True)
                self.calls.append(call)
                out.tool_calls.append(ToolCallDelta(index, call.id, name, arguments))
        elif self._state == "after" and not self.constrained:
            if buffer.strip() and buffer.strip() != self.format.suffix.strip():
                self._content(out, buffer, final=True)
        # "after" (constrained): the suffix or the start of a next call cut short; call syntax, not content.
        # "head": the call's name was cut short (max_tokens or a stop string): nothing usable to send.
        # "args"/"close": the call was announced; it stays incomplete.
        self._record(out)
        return out

    def _record(self, out: Delta) -> None:
        self.content += out.content
        for piece in out.tool_calls:
            if piece.id is None:
                self.calls[piece.index].arguments += piece.arguments
            else:
                self.calls[piece.index].arguments = piece.arguments

    def _content(self, out: Delta, text: str, final: bool = False) -> None:
        # Leading whitespace is held: dropped if a call follows, sent as soon as real text does.
        if not self._has_text:
            self._pending_space += text
            if self._pending_space.strip():
                text, self._pending_space, self._has_text = self._pending_space, "", True
            elif final and not self.calls:
                text, self._pending_space = self._pending_space, ""
            else:
                return
        out.content += text

    def _step(self, out: Delta) -> bool:
        """Consume what the buffer allows in the current state; True if the state changed."""
        state, buffer, fmt = self._state, self._buffer, self.format
        if state == "content":
            self._buffer = ""
            self._content(out, buffer)
            return False
        if state == "text":
            start = buffer.find(fmt.trigger)
            if start < 0:
                hold = _partial_suffix(buffer, fmt.trigger)
                self._buffer = buffer[len(buffer) - hold :] if hold else ""
                self._content(out, buffer[: len(buffer) - hold])
                return False
            self._buffer = buffer[start:]
            self._content(out, buffer[:start])
            self._pending_space = ""  # whitespace-only text before a call is not content
            self._state = "head" if self.constrained else "raw"
            return True
        if state == "raw":
            return False
        if state == "head":
            return self._head(out)
        if state == "args":
            assert self._scanner is not None
            used = self._scanner.scan(buffer)
            if used:
                out.tool_calls.append(ToolCallDelta(len(self.calls) - 1, arguments=buffer[:used]))
            self._buffer = buffer[used:]
            if self._scanner.done:
                self._state = "close"
                return True
            return False
        if state == "close":
            closing = "}" + fmt.call_end
            if len(buffer) < len(closing):
                if not closing.startswith(buffer):
                    return self._give_up(out)
                return False
            if not buffer.startswith(closing):
                return self._give_up(out)
            self.calls[-1].is_complete = True
            self._buffer = buffer[len(closing) :]
            self._state = "after"
            return True
        if state == "after":
            lead = fmt.next_call_lead
            if buffer.startswith(lead):
                self._state = "head"
                return True
            return False  # the suffix, or the start of the next call: held until it is clear
        raise AssertionError(state)

    def _head(self, out: Delta) -> bool:
        fmt, buffer = self.format, self._buffer
        lead = fmt.first_call_lead if not self.calls else fmt.next_call_lead
        if len(buffer) < len(lead):
            return self._give_up(out) if not lead.startswith(buffer) else False
        if not buffer.startswith(lead):
            return self._give_up(out)
        match = _JSON_STRING.match(buffer, len(lead))
        if match is None:
            rest = buffer[len(lead) :]
            return self._give_up(out) if rest and not rest.startswith('"') else False
        name = json.loads(match.group(0))
        key = f', "{fmt.arguments_key}": '
        after = buffer[match.end() :]
        if len(after) < len(key):
            return self._give_up(out) if not key.startswith(after) else False
        if not after.startswith(key) or (self.tool_names is not None and name not in self.tool_names):
            return self._give_up(out)
        call = ParsedCall(self.new_id(), name, "")
        self.calls.append(call)
        out.tool_calls.append(ToolCallDelta(len(self.calls) - 1, call.id, name, ""))
        self._buffer = after[len(key) :]
        self._scanner = _JsonValueScanner()
        self._state = "args"
        return True

    def _give_up(self, out: Delta) -> bool:
        # Not a call after all (a JSON answer that starts like one): the rest is content.
        self._state = "content"
        return True


def _partial_suffix(text: str, trigger: str) -> int:
    """Length of the longest end of `text` that is a proper start of `trigger`."""
    for k in range(min(len(text), len(trigger) - 1), 0, -1):
        if text.endswith(trigger[:k]):
            return k
    return 0


def parse_tool_calls_leniently(format: ToolCallFormat, text: str) -> tuple[str, list[tuple[str, str]]]:
    """Calls in unconstrained text, the way other servers find them; what does not parse stays content.

    For tag formats (`<tool_call>...</tool_call>`) each block is parsed on its own (whitespace and key order
    free, a missing closing tag at the end tolerated); for the others the whole tail must follow the format.

    Returns:
        (content, [(name, arguments as a JSON string)]).
    """
    start_tag, end_tag = format.call_start.strip(), format.call_end.strip()
    calls: list[tuple[str, str]] = []
    if start_tag and end_tag:
        content_parts = []
        position = 0
        while True:
            start = text.find(start_tag, position)
            if start < 0:
                content_parts.append(text[position:])
                break
            content_parts.append(text[position:start])
            end = text.find(end_tag, start + len(start_tag))
            stop = len(text) if end < 0 else end + len(end_tag)
            body = text[start + len(start_tag) : len(text) if end < 0 else end]
            call = _call_from_json(body, format.arguments_key)
            if call is None:
                content_parts.append(text[start:stop])
            else:
                calls.append(call)
            position = stop
        return "".join(content_parts).strip() if calls else "".join(content_parts), calls
    try:
        content, parsed = format.parse_tool_calls(text)
    except ValueError:
        return text, []
    return content, [(c.name, json.dumps(c.arguments, ensure_ascii=False)) for c in parsed]


def _call_from_json(body: str, arguments_key: str) -> tuple[str, str] | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    for key in (arguments_key, "arguments", "parameters"):
        if key in value:
            return value["name"], json.dumps(value[key], ensure_ascii=False)
    return None
