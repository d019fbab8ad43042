"""Tool-call formats: the syntax in which a model writes its calls (how tools are shown to a model is the
server's `tool_prompt`; streamed and lenient parsing of generated text is the server's `tool_parser`).

Invariant: for every format, `parse_tool_calls(format.render_calls(calls))` gives back the same calls, the
grammar `tools.py` builds from a format accepts exactly the texts `render_calls` writes (compact JSON), and
every call starts with `call_start + CALL_HEAD`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from strictcall.grammars.regex import escape

# How every call's JSON object starts: the name comes first, so the grammar can decide the tool early.
CALL_HEAD = '{"name": '


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool's name and its arguments as a JSON value."""

    name: str
    arguments: Any


@dataclass(frozen=True)
class ToolCallFormat:
    """The syntax of a turn that calls tools: `prefix call (separator call)* suffix`.

    Each call is `call_start + {"name": "<name>", "<arguments_key>": <arguments>} + call_end`.

    Attributes:
        name: the format's name (`hermes`, `llama3_json`, `mistral`, `generic`).
        trigger: in `auto` mode, the text that switches from free text to a call; every first call starts
            with it.
        special_tokens: special tokens of the model that this syntax writes (matched as their text).
        tools_in_template: whether the chat template renders the tools itself; if not, the server describes
            them in a system message.
    """

    name: str
    prefix: str
    call_start: str
    call_end: str
    separator: str
    suffix: str
    trigger: str
    arguments_key: str = "arguments"
    special_tokens: tuple[str, ...] = ()
    tools_in_template: bool = True

    def __post_init__(self) -> None:
        if not self.trigger or not self.first_call_lead.startswith(self.trigger):
            raise ValueError(f"format {self.name!r}: trigger {self.trigger!r} must start every first call")

    @property
    def first_call_lead(self) -> str:
        """The text before the first call's name."""
        return self.prefix + self.call_start + CALL_HEAD

    @property
    def next_call_lead(self) -> str:
        """The text before a later call's name."""
        return self.separator + self.call_start + CALL_HEAD

    def call_regex(self, name: str, arguments_regex: str) -> str:
        """The regex of one whole call: `call_start {"name": "<name>", "arguments": <arguments>} call_end`."""
        head = CALL_HEAD + json.dumps(name, ensure_ascii=False) + f', "{self.arguments_key}": '
        return escape(self.call_start + head) + "(?:" + arguments_regex + ")" + escape("}" + self.call_end)

    def render_calls(self, calls: list[ToolCall]) -> str:
        """The text a model writes for these calls (compact JSON, as the grammar allows)."""
        bodies = [
            self.call_start
            + json.dumps({"name": c.name, self.arguments_key: c.arguments}, ensure_ascii=False, separators=(", ", ": "))
            + self.call_end
            for c in calls
        ]
        return self.prefix + self.separator.join(bodies) + self.suffix

    def parse_tool_calls(self, text: str) -> tuple[str, list[ToolCall]]:
        """Split generated text into the free text before the calls and the calls.

        Raises:
            ValueError: the calls part does not follow the format (only for unconstrained text).
        """
        start = text.find(self.trigger)
        if start < 0:
            return text, []
        content, rest = text[:start], text[start:]
        if not rest.startswith(self.prefix):
            raise ValueError(f"expected {self.prefix!r} at {rest[:40]!r}")
        rest = rest[len(self.prefix) :]
        calls: list[ToolCall] = []
        decoder = json.JSONDecoder()
        while True:
            if not rest.startswith(self.call_start):
                raise ValueError(f"expected {self.call_start!r} at {rest[:40]!r}")
            body, end = decoder.raw_decode(rest, len(self.call_start))
            if not isinstance(body, dict) or not isinstance(body.get("name"), str) or self.arguments_key not in body:
                raise ValueError(f"a call must be {{\"name\": ..., \"{self.arguments_key}\": ...}}, got {body!r}")
            calls.append(ToolCall(body["name"], body[self.arguments_key]))
            rest = rest[end:]
            if not rest.startswith(self.call_end):
                raise ValueError(f"expected {self.call_end!r} at {rest[:40]!r}")
            rest = rest[len(self.call_end) :]
            if self.separator and rest.startswith(self.separator + self.call_start):
                rest = rest[len(self.separator) :]
                continue
            if rest.strip() != self.suffix.strip():
                raise ValueError(f"unexpected text after the calls: {rest[:40]!r}")
            return content, calls


HERMES = ToolCallFormat(
    name="hermes", prefix="", call_start="<tool_call>\n", call_end="\n</tool_call>", separator="\n", suffix="", trigger="<tool_call>"
)
LLAMA3_JSON = ToolCallFormat(
    name="llama3_json", prefix="", call_start="", call_end="", separator="; ", suffix="", trigger='{"name": ', arguments_key="parameters"
)
MISTRAL = ToolCallFormat(
    name="mistral", prefix="[TOOL_CALLS][", call_start="", call_end="", separator=", ", suffix="]", trigger="[TOOL_CALLS]",
    special_tokens=("[TOOL_CALLS]",),
)
# For chat templates that know nothing of tools (SmolLM2's): hermes syntax, tools described by us.
GENERIC = ToolCallFormat(
    name="generic", prefix="", call_start="<tool_call>\n", call_end="\n</tool_call>", separator="\n", suffix="",
    trigger="<tool_call>", tools_in_template=False,
)
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL, GENERIC)}


def detect_format(chat_template: str | None) -> ToolCallFormat:
    """Choose the format a chat template was written for; `generic` if it does not render tools."""
    template = chat_template or ""
    if not re.search(r"\btools\b", template):
        return GENERIC
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|start_header_id|>" in template or "<|python_tag|>" in template:
        return LLAMA3_JSON
    return GENERIC


def get_format(name: str) -> ToolCallFormat:
    """A format by name.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if name not in FORMATS:
        raise ValueError(f"unknown tool-call format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]
