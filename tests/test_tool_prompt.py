"""Tools shown as Python signatures: the exact text, valid Python for every BFCL tool, nothing hidden."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from strictcall.server.tool_prompt import is_plain, python_signature, python_type

SPEED = {
    "name": "calculate_speed",
    "description": "Calculate the speed of an object.\n  Python 3 syntax.",
    "parameters": {
        "type": "object",
        "required": ["distance", "time"],
        "properties": {
            "distance": {"type": "integer", "description": "The distance in meters."},
            "time": {"type": "number", "description": "The time in seconds."},
            "to_unit": {"type": "string", "enum": ["m/s", "km/h"], "description": "The unit.", "default": "m/s"},
            "round": {"type": "boolean", "description": "Round the result.", "default": True},
            "marks": {"type": "array", "items": {"type": "integer"}, "description": "Checkpoints."},
        },
    },
}


def test_a_tool_reads_as_a_python_function_with_a_docstring() -> None:
    assert python_signature(SPEED) == (
        'def calculate_speed(distance: int, time: float, to_unit: Literal["m/s", "km/h"] = "m/s", round: bool = True, '
        "marks: list[int] = None):\n"
        '    """Calculate the speed of an object. Python 3 syntax.\n'
        "\n"
        "    Args:\n"
        "        distance: The distance in meters.\n"
        "        time: The time in seconds.\n"
        "        to_unit: The unit.\n"
        "        round: Round the result.\n"
        "        marks: Checkpoints.\n"
        '    """'
    )


def test_declared_order_is_kept_and_a_late_required_parameter_makes_them_keyword_only() -> None:
    # The grammar writes properties in declared order, so the signature shows that order.
    function = {"name": "f", "parameters": {"type": "object", "required": ["b"], "properties": {
        "a": {"type": "integer"}, "b": {"type": "string"}}}}
    signature = python_signature(function)
    assert signature.startswith("def f(*, a: int = None, b: str):")
    ast.parse(signature)


def test_a_function_without_parameters() -> None:
    assert python_signature({"name": "now", "description": "The time."}) == 'def now():\n    """The time.\n    """'


@pytest.mark.parametrize("schema,annotation", [
    ({"type": ["string", "null"]}, "str | None"),
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "int | str"),
    ({"const": "x"}, 'Literal["x"]'),
    ({"enum": [1, None, True]}, "Literal[1, None, True]"),
    ({"type": "array"}, "list"),
    ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "list[list[float]]"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, "dict"),
    ({}, "Any"),
    ({"$ref": "#/$defs/x"}, "Any"),
])
def test_python_types(schema, annotation) -> None:
    assert python_type(schema) == annotation


def test_what_a_python_type_cannot_say_is_given_as_json_schema() -> None:
    nested = {"type": "array", "description": "Conditions.", "items": {"type": "object", "required": ["field"],
                                                                    "properties": {"field": {"type": "string", "description": "The field."}}}}
    bounded = {"type": "integer", "minimum": 1, "description": "How many."}
    assert not is_plain({"type": "string", "format": "date"}) and is_plain({"type": "number", "format": "float"})
    function = {"name": "query", "parameters": {"type": "object", "properties": {"where": nested, "limit": bounded, "table": {"type": "string"}}}}
    signature = python_signature(function)
    assert not is_plain(nested) and not is_plain(bounded) and is_plain({"type": "string", "description": "x"})
    lines = {line.strip().split(":")[0]: line.strip() for line in signature.splitlines()[4:-1]}
    assert lines["where"] == "where: Conditions. JSON Schema: " + json.dumps({k: v for k, v in nested.items() if k != "description"})
    assert lines["limit"] == 'limit: How many. JSON Schema: {"type": "integer", "minimum": 1}'
    assert lines["table"] == "table:"


def test_every_bfcl_tool_is_valid_python_and_shows_every_parameter_and_description(data_dir: Path) -> None:
    count = 0
    for path in sorted((data_dir / "bfcl").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for tool in json.loads(line)["tools"]:
                function = tool["function"]
                signature = python_signature(function)
                definition = ast.parse(signature).body[0]
                assert isinstance(definition, ast.FunctionDef) and definition.name == function["name"]
                arguments = definition.args.args + definition.args.kwonlyargs
                assert [a.arg for a in arguments] == list(function["parameters"].get("properties", {}))
                for name, schema in function["parameters"].get("properties", {}).items():
                    description = " ".join(schema.get("description", "").split())
                    assert f"        {name}: {description}".rstrip() in signature
                count += 1
    assert count >= 200  # 265 tools in the sample
