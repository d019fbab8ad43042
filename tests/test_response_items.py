"""Responses API output items built from the chat parser's deltas (server/response_items.py), without a model.

The key property: however the text is split, the events add up to the output the whole text gives (the
non-streamed response), every item added is done, and only complete calls are in the output.
"""

from __future__ import annotations

import itertools
import random

import pytest

from strictcall.grammars.formats import GENERIC, MISTRAL
from strictcall.server.response_items import OutputBuilder
from strictcall.server.tool_parser import OutputParser

NAMES = frozenset({"get_weather", "get_time"})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TIME_CALL = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'

# (name, format, text, engine finish reason, expected [(type, status, text or arguments)] of the output)
CASES = [
    ("text", GENERIC, "Hello there!", "stop", [("message", "completed", "Hello there!")]),
    ("text cut", GENERIC, "Hello th", "length", [("message", "incomplete", "Hello th")]),
    ("one call", GENERIC, CALL, "stop", [("function_call", "completed", '{"city": "Paris"}')]),
    ("text then calls", GENERIC, "Let me look." + CALL + "\n" + TIME_CALL, "stop",
     [("message", "completed", "Let me look."), ("function_call", "completed", '{"city": "Paris"}'), ("function_call", "completed", "{}")]),
    ("a call cut short", GENERIC, CALL + "\n" + TIME_CALL[:30], "length", [("function_call", "completed", '{"city": "Paris"}')]),
    ("mistral calls", MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "a]b"}}]', "stop",
     [("function_call", "completed", "{}"), ("function_call", "completed", '{"city": "a]b"}')]),
    ("nothing", GENERIC, "", "stop", []),
]


def _builder(fmt, constrained: bool = True) -> OutputBuilder:
    counter = itertools.count()
    return OutputBuilder(OutputParser(fmt, parse_tools=True, constrained=constrained, tool_names=NAMES,
                                      new_id=lambda: f"call_{next(counter)}"), new_id=lambda prefix: f"{prefix}{next(counter)}")


def _summary(output: list[dict]) -> list[tuple[str, str, str]]:
    return [(i["type"], i["status"], i["content"][0]["text"] if i["type"] == "message" else i["arguments"]) for i in output]


@pytest.mark.parametrize("name,fmt,text,reason,expected", CASES, ids=[c[0] for c in CASES])
def test_any_split_adds_up_to_the_whole_output(name, fmt, text, reason, expected) -> None:
    whole = _builder(fmt)
    whole.feed(text)
    whole.finish(reason)
    assert _summary(whole.output) == expected
    rng = random.Random(name)
    for _ in range(20):
        builder, events, i = _builder(fmt), [], 0
        while i < len(text):
            step = rng.randint(1, 6)
            events += builder.feed(text[i:i + step])
            i += step
        events += builder.finish(reason)
        assert _summary(builder.output) == expected
        added = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.added"}
        done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
        assert added.keys() == done.keys() == set(range(len(builder.items)))
        for index, item in done.items():
            kind = "response.output_text.delta" if item["type"] == "message" else "response.function_call_arguments.delta"
            deltas = "".join(e["delta"] for e in events if e["type"] == kind and e["output_index"] == index)
            assert deltas == (item["content"][0]["text"] if item["type"] == "message" else item["arguments"])
        # Events of an item come between its added and done; items do not overlap.
        order = [(e["type"], e["output_index"]) for e in events if "output_index" in e]
        for index in done:
            positions = [k for k, (_, j) in enumerate(order) if j == index]
            assert order[positions[0]][0] == "response.output_item.added" and order[positions[-1]][0] == "response.output_item.done"
            assert positions == list(range(positions[0], positions[-1] + 1))


def test_unconstrained_calls_come_whole_at_the_end() -> None:
    builder = _builder(GENERIC, constrained=False)
    events = builder.feed("Sure. " + CALL) + builder.finish("stop")
    assert _summary(builder.output) == [("message", "completed", "Sure. "), ("function_call", "completed", '{"city": "Paris"}')]
    assert [e["type"] for e in events if e["type"].startswith("response.function_call")] == [
        "response.function_call_arguments.delta", "response.function_call_arguments.done"]
