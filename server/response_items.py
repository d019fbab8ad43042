"""A Responses API output (`message` items with `output_text`, `function_call` items) built from the chat path's
`OutputParser` deltas, with the stream events that announce it.

Invariant: a non-streamed output is what its stream's events add up to, because both come from one
`OutputBuilder` fed the same text (the non-streamed path feeds it whole, as chat does with `OutputParser`): the
`output_text.delta`s of a message concatenate to its `text`, the `function_call_arguments.delta`s of a call to its
`arguments`, and every item announced by `output_item.added` is closed by `output_item.done`. A `function_call`
in the final output is complete (its arguments are the JSON the grammar enforced); a call that the budget cut
short is announced in the stream and closed with `status: "incomplete"`, but left out of the output, as chat
completions leave it out of `tool_calls`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strictcall.server.protocol import random_id
from strictcall.server.tool_parser import Delta, OutputParser, ToolCallDelta

Event = dict[str, Any]


class OutputBuilder:
    """One response's output items, built from the generated text as it comes.

    Args:
        parser: the chat path's parser for this turn (content and tool calls).
        new_id: makes item ids (`msg_...`, `fc_...`).
    """

    def __init__(self, parser: OutputParser, new_id: Callable[[str], str] = random_id):
        self.parser = parser
        self.new_id = new_id
        self.items: list[dict[str, Any]] = []
        self._open: int | None = None  # output index of the item still being written
        self._call_items: dict[int, int] = {}  # parser call index -> output index

    def feed(self, text: str) -> list[Event]:
        """Add generated text; returns the events it makes."""
        events: list[Event] = []
        self._apply(self.parser.feed(text), events)
        return events

    def finish(self, engine_reason: str | None) -> list[Event]:
        """The end of the output: what the parser held back, then every open item closed."""
        events: list[Event] = []
        self._apply(self.parser.finish(), events)
        self._close(events, truncated=engine_reason == "length")
        return events

    @property
    def output(self) -> list[dict[str, Any]]:
        """The response's `output`: messages, and the function calls that were completed."""
        return [item for item in self.items if item["type"] == "message" or item["status"] == "completed"]

    @property
    def num_calls(self) -> int:
        return sum(item["type"] == "function_call" and item["status"] == "completed" for item in self.items)

    def _apply(self, delta: Delta, events: list[Event]) -> None:
        if delta.content:
            self._text(delta.content, events)
        for piece in delta.tool_calls:
            self._call_piece(piece, events)
        if self._open is not None and self.items[self._open]["type"] == "function_call":
            call = self.parser.calls[self._call_index(self._open)]
            if call.is_complete:
                self._close(events)

    def _text(self, text: str, events: list[Event]) -> None:
        if self._open is None or self.items[self._open]["type"] != "message":
            self._close(events)
            item: dict[str, Any] = {"id": self.new_id("msg_"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            index = self._add(item, events)
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": index, "content_index": 0,
                           "part": dict(part)})
        open_index = self._open
        assert open_index is not None
        message = self.items[open_index]
        message["content"][0]["text"] += text
        events.append({"type": "response.output_text.delta", "item_id": message["id"], "output_index": open_index, "content_index": 0,
                       "delta": text, "logprobs": []})

    def _call_piece(self, piece: ToolCallDelta, events: list[Event]) -> None:
        if piece.id is not None:
            self._close(events)
            item = {"id": self.new_id("fc_"), "type": "function_call", "status": "in_progress", "call_id": piece.id,
                    "name": piece.name or "", "arguments": ""}
            self._call_items[piece.index] = self._add(item, events)
        if piece.arguments:
            index = self._call_items[piece.index]
            item = self.items[index]
            item["arguments"] += piece.arguments
            events.append({"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index,
                           "delta": piece.arguments})

    def _add(self, item: dict[str, Any], events: list[Event]) -> int:
        self.items.append(item)
        self._open = len(self.items) - 1
        events.append({"type": "response.output_item.added", "output_index": self._open, "item": _copy(item)})
        return self._open

    def _call_index(self, output_index: int) -> int:
        return next(k for k, v in self._call_items.items() if v == output_index)

    def _close(self, events: list[Event], truncated: bool = False) -> None:
        """Close the open item: `completed`, or `incomplete` if the budget cut it (a call: if it did not close)."""
        index, self._open = self._open, None
        if index is None:
            return
        item = self.items[index]
        if item["type"] == "message":
            part = item["content"][0]
            events.append({"type": "response.output_text.done", "item_id": item["id"], "output_index": index, "content_index": 0,
                           "text": part["text"], "logprobs": []})
            events.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": index, "content_index": 0,
                           "part": dict(part)})
            item["status"] = "incomplete" if truncated else "completed"
        elif self.parser.calls[self._call_index(index)].is_complete:
            item["status"] = "completed"
            events.append({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                           "arguments": item["arguments"]})
        else:
            item["status"] = "incomplete"
        events.append({"type": "response.output_item.done", "output_index": index, "item": _copy(item)})


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item for an event (the item goes on changing)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(part) for part in out["content"]]
    return out
