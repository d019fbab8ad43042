"""Output parsing (server/tool_parser.py), without a model or a server.

The key property: the streamed deltas add up to the non-streamed message, however the text is split.
"""

from __future__ import annotations

import json

import pytest

from strictcall.grammars.formats import FORMATS, GENERIC, HERMES, LLAMA3_JSON, MISTRAL, ToolCall
from strictcall.server.tool_parser import Delta, OutputParser, parse_tool_calls_leniently

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMES = frozenset({"get_weather", "get_time"})

# (name, format, text, parse_tools, constrained, expected content, expected [(name, arguments, complete)])
PARSE_CASES = [
    ("plain text", GENERIC, "Hello there!", True, True, "Hello there!", []),
    ("no tools: tags stay content", GENERIC, '<tool_call>\n{"name": "x"}', False, True, '<tool_call>\n{"name": "x"}', []),
    ("one call", GENERIC, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', True, True, "",
     [("get_weather", '{"city": "Paris"}', True)]),
    ("content then call", GENERIC, 'Let me look.<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', True, True, "Let me look.",
     [("get_time", "{}", True)]),
    ("leading whitespace dropped before a call", GENERIC, '\n <tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', True, True, "",
     [("get_time", "{}", True)]),
    ("two calls", GENERIC,
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a}\\"{b"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     True, True, "", [("get_weather", '{"city": "a}\\"{b"}', True), ("get_time", "{}", True)]),
    ("nested arguments", GENERIC, '<tool_call>\n{"name": "get_weather", "arguments": {"a": [1, {"b": [2]}], "c": null}}\n</tool_call>', True, True,
     "", [("get_weather", '{"a": [1, {"b": [2]}], "c": null}', True)]),
    ("cut in the arguments", GENERIC, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', True, True, "",
     [("get_weather", '{"city": "Pa', False)]),
    ("cut before the closing tag", GENERIC, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool', True, True, "",
     [("get_weather", '{"city": "Paris"}', False)]),
    ("cut in the name", GENERIC, 'Sure. <tool_call>\n{"name": "get_we', True, True, "Sure. ", []),
    ("cut in the next call", GENERIC, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na', True, True, "",
     [("get_time", "{}", True)]),
    ("partial trigger at the end is content", GENERIC, "a < b and <tool", True, True, "a < b and <tool", []),
    ("hermes", HERMES, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', True, True, "", [("get_time", "{}", True)]),
    ("mistral two calls", MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "x"}}]',
     True, True, "", [("get_time", "{}", True), ("get_weather", '{"city": "x"}', True)]),
    ("llama3 call", LLAMA3_JSON, '{"name": "get_time", "parameters": {}}', True, True, "", [("get_time", "{}", True)]),
    ("llama3: a JSON answer that looks like a call head is content", LLAMA3_JSON, '{"name": "Bob", "parameters": 3}', True, True,
     '{"name": "Bob", "parameters": 3}', []),
    ("unconstrained: lenient whitespace and key order", GENERIC,
     'Ok <tool_call> {"arguments": {"city": "Rome"}, "name": "get_weather"} </tool_call>', True, False, "Ok ",
     [("get_weather", '{"city": "Rome"}', True)]),
    ("unconstrained: a call that does not parse stays content", GENERIC, '<tool_call>\n{"name": get_weather}\n</tool_call>', True, False,
     '<tool_call>\n{"name": get_weather}\n</tool_call>', []),
    ("unconstrained: missing closing tag tolerated", GENERIC, '<tool_call>\n{"name": "get_time", "arguments": {}}', True, False, "",
     [("get_time", "{}", True)]),
    ("unconstrained mistral that does not parse", MISTRAL, "[TOOL_CALLS][{oops", True, False, "[TOOL_CALLS][{oops", []),
]


def _run(fmt, text: str, parse_tools: bool, constrained: bool, pieces: list[str]) -> tuple[OutputParser, Delta]:
    parser = OutputParser(fmt, parse_tools=parse_tools, constrained=constrained, tool_names=NAMES if constrained else None)
    total = Delta()
    for piece in pieces:
        total.extend(parser.feed(piece))
    total.extend(parser.finish())
    return parser, total


def _splits(text: str) -> list[list[str]]:
    return [[text], list(text), [text[i : i + 3] for i in range(0, len(text), 3)], [text[:7], text[7:]]]


@pytest.mark.parametrize("name,fmt,text,parse_tools,constrained,content,calls", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_output_parser(name, fmt, text, parse_tools, constrained, content, calls) -> None:
    for pieces in _splits(text):
        parser, total = _run(fmt, text, parse_tools, constrained, pieces)
        assert parser.content == content, pieces
        assert [(c.name, c.arguments, c.is_complete) for c in parser.calls] == calls, pieces
        # The deltas add up to the message: content, and per call the id/name once and the argument fragments.
        assert total.content == content
        rebuilt: dict[int, list] = {}
        for piece in total.tool_calls:
            if piece.id is not None:
                assert piece.index not in rebuilt and piece.name is not None
                rebuilt[piece.index] = [piece.name, piece.arguments]
            else:
                rebuilt[piece.index][1] += piece.arguments
        assert [tuple(rebuilt[i]) for i in sorted(rebuilt)] == [(n, a) for n, a, _ in calls]
        assert len({c.id for c in parser.calls}) == len(calls) and all(c.id.startswith("call_") and len(c.id) == 29 for c in parser.calls)


def test_constrained_arguments_are_the_exact_text() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "caf\\u00e9", "n": 1.50}}\n</tool_call>'
    parser, _ = _run(GENERIC, text, True, True, [text])
    assert parser.calls[0].arguments == '{"city": "caf\\u00e9", "n": 1.50}'
    assert json.loads(parser.calls[0].arguments) == {"city": "café", "n": 1.5}


def test_has_complete_calls() -> None:
    text = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    complete, _ = _run(GENERIC, text, True, True, [text])
    cut, _ = _run(GENERIC, text[:-20], True, True, [text[:-20]])
    assert complete.has_complete_calls and not cut.has_complete_calls


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_render_calls_round_trip_through_the_parser(fmt) -> None:
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {})]
    text = fmt.render_calls(calls)
    for constrained in (True, False):
        parser, _ = _run(fmt, text, True, constrained, [text])
        assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [(c.name, c.arguments) for c in calls]
        assert parser.content == ""


def test_lenient_parser_keeps_text_between_blocks() -> None:
    content, calls = parse_tool_calls_leniently(GENERIC, 'A <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> B <tool_call>bad</tool_call>')
    assert calls == [("f", '{"x": 1}')]
    assert content == "A  B <tool_call>bad</tool_call>"
