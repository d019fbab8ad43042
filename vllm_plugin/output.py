"""The API process's side of a turn on vLLM, without vLLM: which format the model writes, the `auto_tool_bias`
that applies, and the generated text read back into content and tool calls, streamed or not.

Reading is strictcall's own `OutputParser` (server/tool_parser.py), so a turn reads back on vLLM exactly as on
strictcall's server: calls stream as they are written (the name once, then argument fragments), and only a
call whose closing syntax was generated is returned by the non-streamed path (a call cut by `max_tokens` is
dropped, never an error).

Invariant: the streamed deltas of one output add up to the non-streamed result of the same text.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strictcall.grammars import ToolCallFormat, detect_format, get_format
from strictcall.server.model_loader import converted_gguf_dir, resolve_model
from strictcall.server.model_profiles import EMBEDDED, GENERIC, ModelProfile
from strictcall.server.tool_parser import Delta, OutputParser

# STRICTCALL_TOOL_FORMAT: the format, where the chat template vLLM serves with is not the tokenizer's own.
FORMAT_VARIABLE = "STRICTCALL_TOOL_FORMAT"
# STRICTCALL_AUTO_TOOL_BIAS: the server-wide auto_tool_bias (a request's "strictcall": {"auto_tool_bias"} wins).
BIAS_VARIABLE = "STRICTCALL_AUTO_TOOL_BIAS"
# chat_template_kwargs key for the tool choice, where vLLM does not pass it to the renderer (the offline LLM.chat)
CHOICE_KWARG = "strictcall_tool_choice"


def model_format(chat_template: str | None) -> ToolCallFormat:
    """`STRICTCALL_TOOL_FORMAT` if set, else the format the chat template was written for (`generic` if none)."""
    name = os.environ.get(FORMAT_VARIABLE)
    return get_format(name) if name else detect_format(chat_template)


@functools.lru_cache(maxsize=8)
def model_profile(model_path: str) -> ModelProfile:
    """The embedded model's profile for the directory `strictcall-vllm` converts it to, else the generic one."""
    try:
        default = converted_gguf_dir(resolve_model(None))
    except Exception:  # the default model is not installed: nothing can be it
        return GENERIC
    try:
        same = Path(model_path).resolve() == default.resolve()
    except OSError:
        same = False
    return EMBEDDED if same else GENERIC


def auto_tool_bias(model_path: str, requested: float | None) -> float:
    """The request's bias, else `STRICTCALL_AUTO_TOOL_BIAS`, else the model's profile (3.75 for the embedded model)."""
    if requested is not None:
        return float(requested)
    value = os.environ.get(BIAS_VARIABLE)
    if value:
        return float(value)
    return model_profile(model_path).auto_tool_bias


@dataclass(frozen=True)
class ReadCall:
    """A complete call read back from the text."""

    id: str
    name: str
    arguments: str


def read_turn(format: ToolCallFormat, text: str, tool_names: frozenset[str], constrained: bool = True) -> tuple[str, list[ReadCall]]:
    """A whole output -> (content, complete calls): the non-streamed message."""
    parser = OutputParser(format, parse_tools=True, constrained=constrained, tool_names=tool_names)
    parser.feed(text)
    parser.finish()
    return parser.content, [ReadCall(c.id, c.name, c.arguments) for c in parser.calls if c.is_complete]


class TurnStream:
    """One streamed output -> deltas (content text, then call pieces: id and name once, then argument fragments)."""

    def __init__(self, format: ToolCallFormat, tool_names: frozenset[str], constrained: bool = True):
        self._parser = OutputParser(format, parse_tools=True, constrained=constrained, tool_names=tool_names)

    def feed(self, text: str) -> Delta:
        return self._parser.feed(text)

    def finish(self) -> Delta:
        return self._parser.finish()


def call_opening_bias(output_ids: Any, opening: list[int], bias: float) -> int | None:
    """The token to add `bias` to at this step: the next token of the call's opening (`<tool_call>`) while the
    output so far is a proper prefix of it; None otherwise (as strictcall's engine does)."""
    done = len(output_ids)
    if not bias or done >= len(opening):
        return None
    for i in range(done):
        if output_ids[i] != opening[i]:
            return None
    return opening[done]


def strictcall_options(extra: dict[str, Any] | None) -> dict[str, Any]:
    """The request's `"strictcall": {...}` extension (vLLM keeps unknown fields in `model_extra`).

    Raises:
        ValueError: it is not an object, or it has a key this adapter does not know.
    """
    options = (extra or {}).get("strictcall") or {}
    if not isinstance(options, dict):
        raise ValueError("strictcall must be an object")
    unknown = set(options) - {"constrained", "auto_tool_bias", "jump_forward"}
    if unknown:
        raise ValueError(f"strictcall: unknown option(s) {sorted(unknown)}")
    return options
