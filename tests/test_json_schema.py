"""Tests for grammars/json_schema.py on real schemas (BFCL tools, JSONSchemaBench) and hand-written ones.

Both directions of the invariant: valid instances (compact, keys in declared order, within the documented
bounds) match the regex; strings drawn at random from the regex parse as JSON and validate, formats included.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from strictcall.grammars.automaton import DEAD, MAX_FRAME_DEPTH, LazyDfa, Nfa
from strictcall.grammars.json_schema import (
    SchemaOptions,
    SchemaRegex,
    UnsupportedSchemaError,
    json_schema_to_regex,
)
from strictcall.grammars.regex import Alternation, CharClass, Concat, Node, RuleRef, parse_grammar, parse_regex

NUM_BENCH_SAMPLE = 200  # of the 230 JSONSchemaBench records in tests/data

# name, schema, instances that must match, instances that must not.
CASES = [
    ("optional properties", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}},
     [{}, {"a": 1}, {"b": "x"}, {"a": 1, "b": "x"}], ['{"b": "x", "a": 1}', '{"a": 1,"b": "x"}', '{, "a": 1}']),
    ("required in the middle", {"type": "object", "properties": {"a": {"type": "null"}, "b": {"type": "boolean"},
                                                                  "c": {"type": "null"}}, "required": ["b"]},
     [{"b": True}, {"a": None, "b": False, "c": None}], ["{}", '{"a": null}']),
    ("required outside properties", {"type": "object", "properties": {}, "required": ["x"]},
     [{"x": [1, {"y": "z"}]}], ["{}"]),
    ("additional properties", {"type": "object", "properties": {"a": {"type": "integer"}},
                               "additionalProperties": {"type": "string"}},
     [{"a": 1, "b": "x", "c": "y"}, {"z": "w"}], ['{"a": 1, "a": "x"}', '{"b": 1}']),
    ("any object", {"type": "object"}, [{}, {"k": [1, None]}], ["[]"]),
    ("type list", {"type": ["string", "null"]}, ["x", None], ["1"]),
    ("enum of anything", {"enum": [1, "a\"b", None, [1, {"k": "v"}], {"x": 1.5}]},
     [1, "a\"b", None, [1, {"k": "v"}], {"x": 1.5}], ['"a"', "2"]),
    ("const", {"const": "é\n"}, ["é\n"], ['"é"']),
    ("enum filtered by type", {"type": "string", "enum": ["a", 1]}, ["a"], ["1"]),
    ("integer range", {"type": "integer", "minimum": -15, "exclusiveMaximum": 120},
     [-15, -1, 0, 9, 10, 99, 119], ["-16", "120", "007", "-0", "1.0"]),
    ("draft 4 exclusive", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 0, "exclusiveMinimum": True,
                           "maximum": 3}, [1, 2, 3],
     ["0", "4"]),
    ("unbounded integer", {"type": "integer"}, [0, -7, 2**53, -(2**53)], ["01", "+1", "1e3", "12345678901234567"]),
    ("number range", {"type": "number", "minimum": -1.25, "maximum": 2.5},
     [-1.25, -1.2, -1, 0, 0.001, 2, 2.5, 2.49999], ["-1.26", "2.50001", "3", "1e0"]),
    ("exclusive number", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
     [0.5, 0.0001, 0.99999], ["0", "0.0", "1", "1.0", "-0.1"]),
    ("unbounded number", {"type": "number"}, [1, -2.5, 1e-07, 1.5e300, 0.30000000000000004], ["1.", ".5", "1e"]),
    ("string lengths", {"type": "string", "minLength": 2, "maxLength": 3}, ["ab", "a\"c", "\\\\\\"],
     ['"a"', '"abcd"']),
    ("string escapes", {"type": "string"}, ["\x00\x1f\u2028\"\\/", "😀"], ['"\x01"', '"\\x"', '"\\ud800"']),
    ("pattern", {"type": "string", "pattern": "^[a-z]+\\d?$"}, ["abc", "ab1"], ['"ab12"', '"A"']),
    ("search pattern", {"type": "string", "pattern": "o\"k"}, ["o\"k", "xxo\"kyy"], ['"ok"']),
    ("pattern with length", {"type": "string", "pattern": "^[A-Z][a-z]*$", "maxLength": 3}, ["A", "Abc"],
     ['"Abcd"']),
    ("date", {"type": "string", "format": "date"}, ["2024-02-29", "2023-12-31"], ['"2023-02-29"', '"2023-13-01"']),
    ("date-time", {"type": "string", "format": "date-time"}, ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.5+01:00"],
     ['"2024-01-02 03:04:05"']),
    ("uuid", {"type": "string", "format": "uuid"}, ["12345678-1234-1234-1234-123456789abc"], ['"1234"']),
    ("ipv4", {"type": "string", "format": "ipv4"}, ["192.168.0.1"], ['"256.1.1.1"', '"01.1.1.1"']),
    ("ipv6", {"type": "string", "format": "ipv6"}, ["::1", "fe80::1:2", "1:2:3:4:5:6:7:8"], ['"1:2"']),
    ("array bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
     [[1], [1, 2, 3]], ["[]", "[1, 2, 3, 4]", "[1,2]"]),
    ("prefix items", {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                      "items": False, "minItems": 1}, [[1], [1, "a"]], ['[1, "a", 2]', '["a"]', "[]"]),
    ("draft 4 tuple", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "array", "items": [{"type": "boolean"}],
                       "additionalItems": {"type": "null"}},
     [[], [True], [True, None, None]], ["[null]"]),
    ("anyOf", {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, [1, "a"], ['"ab"']),
    ("tagged oneOf", {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]},
     [{"kind": "a", "x": 1}, {"kind": "b"}], ['{"kind": "c"}']),
    ("allOf merge", {"allOf": [{"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}},
                                "required": ["a"]},
                               {"properties": {"a": {"maximum": 5}, "b": {"type": "string"}}}]},
     [{"a": 5}, {"a": 0, "b": "x"}], ['{"a": 6}', "{}"]),
    ("recursive ref", {"$defs": {"node": {"type": "object", "properties": {
        "value": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}, "required": ["value"]}},
        "$ref": "#/$defs/node"},
     [{"value": 1}, {"value": 1, "next": {"value": 2, "next": {"value": 3}}}],
     ['{"value": 1, "next": {"value": "2"}}', '{"next": {"value": 2}}']),
    ("root ref", {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}, [[], [[], [[]]]], ["[1]"]),
    ("dependentRequired", {"type": "object", "properties": {"card": {"type": "integer"}, "name": {"type": "string"},
                                                           "billing": {"type": "string"}, "x": {"type": "null"}},
                           "dependentRequired": {"card": ["billing"], "billing": ["name"]}},
     [{}, {"x": None}, {"name": "a"}, {"card": 1, "name": "a", "billing": "b"}, {"name": "a", "billing": "b", "x": None}],
     ['{"card": 1}', '{"card": 1, "billing": "b"}', '{"billing": "b"}', '{"card": 1, "name": "a"}']),
    ("draft 4 dependencies", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
                              "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["b"],
                              "dependencies": {"b": ["a"]}},
     [{"a": 1, "b": 2}], ['{"b": 2}', "{}", '{"a": 1}']),
    ("dependencies on undeclared names", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                          "dependentRequired": {"z": ["a"], "b": ["z"]}},
     [{"a": 1}, {}], ['{"b": 1}', '{"a": 1, "b": 2}']),
    ("base64 byte", {"type": "string", "format": "byte"}, ["", "YWJj", "YWI=", "YQ=="], ['"YWJ"', '"Y==="', '"a b="']),
    ("format no vocabulary defines", {"type": "string", "format": "semver", "maxLength": 5}, ["1.2.3", "x y"],
     ['"1.2.3.4"', '3']),
    ("annotation format with pattern", {"type": "string", "format": "url", "pattern": "^v[0-9]+$"}, ["v1", "v22"],
     ['"x"', '"v"']),
    ("patternProperties, closed", {"type": "object", "properties": {"id": {"type": "integer"}},
                                   "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False},
     [{"id": 1, "x-a": "b"}, {"x-": "", "x-b": "c"}, {}], ['{"id": 1, "y": "b"}', '{"x-a": 1}', '{"ax-": "b"}']),
    ("patternProperties sharing a schema", {"type": "object", "patternProperties": {"^a": {"type": "integer"}, "b$": {"type": "integer"}},
                                            "additionalProperties": False},
     [{"a1": 1, "cb": 2}, {"ab": 3}], ['{"c": 1}', '{"a": "x"}']),
    ("any value nests past 3 levels", {"type": "object", "properties": {"a": {}, "b": True}},
     [{"a": [[[[[[1]]]]]], "b": {"c": {"d": {"e": {"f": [None]}}}}}, {"a": {}}], ['{"a": [[1]}', '{"b": {"c"}}']),
    ("false property", {"type": "object", "properties": {"a": False, "b": {"type": "null"}}}, [{"b": None}],
     ['{"a": 1}']),
    ("annotations ignored", {"type": "integer", "title": "t", "description": "d", "default": 1, "examples": [2],
                             "optional": True, "deprecated": True, "format": "int32"}, [3], ['"3"']),
]

# name, schema, keyword that must be reported.
UNSUPPORTED = [
    ("uniqueItems", {"type": "array", "uniqueItems": True}, "uniqueItems"),
    ("patternProperties with other keys", {"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ("patternProperties with two schemas", {"patternProperties": {"^a": {"type": "integer"}, "b": {}},
                                            "additionalProperties": False}, "patternProperties"),
    ("patternProperties matching a declared name", {"properties": {"ab": {}}, "patternProperties": {"^a": {}},
                                                    "additionalProperties": False}, "patternProperties"),
    ("oneOf where pattern keys may overlap", {"oneOf": [
        {"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": False},
        {"type": "object", "properties": {"xa": {}}, "required": ["xa"]}]}, "oneOf"),
    ("number multipleOf", {"type": "number", "multipleOf": 0.01}, "multipleOf"),
    ("not", {"not": {"type": "string"}}, "not"),
    ("if", {"if": {"type": "string"}, "then": {"minLength": 1}}, "if"),
    ("contains", {"type": "array", "contains": {"type": "integer"}}, "contains"),
    ("standard format not enforced", {"type": "string", "format": "json-pointer"}, "format"),
    ("overlapping oneOf", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ("dependencies", {"type": "object", "dependencies": {"a": ["b"]}}, "dependencies"),
    ("schema dependencies", {"type": "object", "properties": {"a": {}}, "dependencies": {"a": {"required": ["b"]}}},
     "dependencies"),
    ("pattern with length", {"type": "string", "pattern": "a", "maxLength": 4}, "maxLength"),
]


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def _bfcl_schemas(data_dir: Path) -> list[tuple[str, Any]]:
    schemas = {}
    for path in sorted((data_dir / "bfcl").glob("*.jsonl")):
        for record in _load(path):
            for tool in record["tools"]:
                schemas[json.dumps(tool["function"]["parameters"], sort_keys=True)] = (
                    f"{record['id']}/{tool['function']['name']}", tool["function"]["parameters"])
    return list(schemas.values())


@lru_cache(maxsize=1)
def _bench_records(data_dir: Path) -> list[dict[str, Any]]:
    return [record for path in sorted((data_dir / "jsonschemabench").glob("*.jsonl")) for record in _load(path)]


def _bench_sample(data_dir: Path) -> list[dict[str, Any]]:
    """A deterministic sample: the records with the smallest sha256 of their id."""
    records = sorted(_bench_records(data_dir), key=lambda record: hashlib.sha256(record["id"].encode()).hexdigest())
    return records[:NUM_BENCH_SAMPLE]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _resolve(schema: Any, root: Any, hops: int = 0) -> Any:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") \
            and hops < 20:
        target = root
        for token in schema["$ref"][1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            target = target.get(token) if isinstance(target, dict) else None
        schema, hops = target, hops + 1
    return schema


def _subschemas(schema: Any, root: Any) -> list[dict[str, Any]]:
    """The schema and the allOf/anyOf/oneOf members whose `properties`/`items` describe the same value."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return []
    found = [schema]
    for keyword in ("allOf", "anyOf", "oneOf"):
        for member in schema.get(keyword, []):
            found.extend(_subschemas(member, root))
    return found


def _declared_order(value: Any, schema: Any, root: Any, undeclared: list[str] | None = None) -> Any:
    """The instance with every object's keys in the order our regex writes them (declared, then extra).

    Keys our regex never writes (undeclared ones where the schema did not ask for extras) go to `undeclared`.
    """
    members = _subschemas(schema, root)
    if isinstance(value, dict):
        order: dict[str, Any] = {}
        for member in members:
            for name, subschema in member.get("properties", {}).items():
                order.setdefault(name, subschema)
        for member in members:
            for name in member.get("required", []):
                order.setdefault(name, True)
        extra = next((m["additionalProperties"] for m in members if isinstance(m.get("additionalProperties"), dict)),
                     True)
        allows_extra = not order or any(m.get("additionalProperties") not in (None, False) for m in members)
        if undeclared is not None and not allows_extra:
            undeclared.extend(name for name in value if name not in order)
        keys = [name for name in order if name in value] + [name for name in value if name not in order]
        return {name: _declared_order(value[name], order.get(name, extra), root, undeclared) for name in keys}
    if isinstance(value, list):
        result = []
        for index, item in enumerate(value):
            item_schema: Any = True
            for member in members:
                prefix = member.get("prefixItems", member.get("items") if isinstance(member.get("items"), list)
                                    else [])
                if index < len(prefix):
                    item_schema = prefix[index]
                elif isinstance(member.get("items"), dict):
                    item_schema = member["items"]
            result.append(_declared_order(item, item_schema, root, undeclared))
        return result
    return value


DEFAULT_OPTIONS = SchemaOptions()


def _out_of_bounds(value: Any, options: SchemaOptions = DEFAULT_OPTIONS) -> bool:
    """Outside the documented bounds: long integers, long fractions, exponents or integral floats."""
    if isinstance(value, dict):
        return any(_out_of_bounds(item, options) for item in value.values())
    if isinstance(value, list):
        return any(_out_of_bounds(item, options) for item in value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return len(str(abs(value))) > options.max_integer_digits
    if isinstance(value, float):
        text = repr(value)
        return "e" in text or value.is_integer() or len(text.partition(".")[2]) > options.max_fraction_digits
    return False


def _closed(schema: Any, in_all_of: bool = False) -> Any:
    """The schema as our compiler reads it: declared properties and no `additionalProperties` -> no extras."""
    if isinstance(schema, list):
        return [_closed(item, in_all_of) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _closed(value, key == "allOf") if key not in ("enum", "const", "default", "examples") else value
              for key, value in schema.items()}
    if ("properties" in schema or "required" in schema) and "additionalProperties" not in schema \
            and not in_all_of and "$ref" not in schema:
        result["additionalProperties"] = False
    return result


def _validator(schema: Any) -> jsonschema.protocols.Validator:
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def _fullmatch(result: SchemaRegex) -> Callable[[str], bool]:
    """Whether a text is in the grammar's language: Python's `re` (an independent reading) where there are no
    rules, which `re` cannot call; else our automaton."""
    if not result.rules:
        return re.compile(result.regex).fullmatch  # type: ignore[return-value]
    main, rules = parse_grammar(result.text)
    dfa = LazyDfa(Nfa(main, rules=rules))

    def match(text: str) -> bool:
        state = dfa.walk(dfa.start, text.encode("utf-8"))
        return state != DEAD and bool(dfa.is_accepting_state[state])

    return match


def _sample(node: Node, rng: random.Random, rules: dict[str, Node] | None = None) -> str:
    """A random string of the grammar's language: a walk with repeats bounded at min + 2, ASCII preferred; past 20
    nested rule calls, the option that calls least is taken (so the walk ends)."""
    out: list[str] = []
    stack: list[Node | int] = [node]
    depth = 0
    while stack:
        item = stack.pop()
        if isinstance(item, int):
            depth += item
        elif isinstance(item, RuleRef):
            stack.extend([-1, (rules or {})[item.name]])
            depth += 1
        elif isinstance(item, Alternation) and depth > 20:
            stack.append(min(item.options, key=lambda option: str(option).count("RuleRef")))
        elif isinstance(item, CharClass):
            printable = [(max(lo, 0x20), min(hi, 0x7E)) for lo, hi in item.ranges if lo <= 0x7E and hi >= 0x20]
            ranges = printable if printable and rng.random() < 0.9 else list(item.ranges)
            low, high = rng.choice(ranges)
            out.append(chr(rng.randint(low, high)))
        elif isinstance(item, Concat):
            stack.extend(reversed(item.parts))
        elif isinstance(item, Alternation):
            stack.append(rng.choice(item.options))
        else:
            high = item.min_count + 2 if item.max_count is None else min(item.max_count, item.min_count + 2)
            stack.extend([item.node] * rng.randint(item.min_count, high))
    return "".join(out)


MAX_CHECKED_REGEX_CHARS = 150_000  # Python's re.compile needs ~1 s per 500 KB: the big ones are compile-only


def _check_instances(schema: Any, result: SchemaRegex, valid: list[Any], invalid: list[Any], stats: Counter[str],
                     failures: list[str], name: str) -> None:
    if len(result.text) > MAX_CHECKED_REGEX_CHARS:
        stats["instances not checked (regex too long for Python's re)"] += len(valid) + len(invalid)
        return
    fullmatch = _fullmatch(result)
    for instance in valid:
        undeclared: list[str] = []
        text = _compact(_declared_order(instance, schema, schema, undeclared))
        if fullmatch(text):
            stats["valid matched"] += 1
        elif _out_of_bounds(instance):
            stats["valid outside documented bounds"] += 1
        elif undeclared or not _validator(_closed(schema)).is_valid(instance):
            stats["valid with undeclared keys (not generated by default)"] += 1
        else:
            failures.append(f"{name}: {text[:300]}")
    for instance in invalid:
        text = _compact(_declared_order(instance, schema, schema))
        stats["invalid rejected" if not fullmatch(text) else "invalid accepted"] += 1


@pytest.mark.parametrize(("schema", "valid", "invalid"), [row[1:] for row in CASES], ids=[row[0] for row in CASES])
def test_cases(schema: dict[str, Any], valid: list[Any], invalid: list[str]) -> None:
    fullmatch = _fullmatch(json_schema_to_regex(schema))
    validator = _validator(schema)
    for instance in valid:
        assert validator.is_valid(instance), instance  # the table itself is right
        assert fullmatch(_compact(instance)), _compact(instance)
    for text in invalid:
        assert not fullmatch(text), text


@pytest.mark.parametrize(("schema", "keyword"), [row[1:] for row in UNSUPPORTED], ids=[row[0] for row in UNSUPPORTED])
def test_unsupported_keyword_is_named_or_reported(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(UnsupportedSchemaError) as error:
        json_schema_to_regex(schema)
    assert error.value.keyword == keyword
    assert f"keyword {keyword!r}" in str(error.value) and "with strict off" in str(error.value)
    relaxed = json_schema_to_regex(schema, strict=False)
    assert (error.value.pointer, keyword) in relaxed.unenforced


def test_strict_false_enforces_the_rest() -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "uniqueItems": True}}, "required": ["tags"]}
    result = json_schema_to_regex(schema, strict=False)
    assert result.unenforced == (("/properties/tags", "uniqueItems"),)
    assert re.fullmatch(result.regex, '{"tags": ["a", "a"]}')
    assert not re.fullmatch(result.regex, '{"tags": [1]}')


def test_errors_name_pointer_and_fix() -> None:
    with pytest.raises(UnsupportedSchemaError, match=r"schema at /properties/unit: keyword 'patternProperties'"):
        json_schema_to_regex({"type": "object", "properties": {"unit": {"type": "object",
                                                                         "patternProperties": {"x": {}}}}})
    with pytest.raises(UnsupportedSchemaError, match="not a local reference"):
        json_schema_to_regex({"$ref": "https://example.com/schema.json"})
    with pytest.raises(UnsupportedSchemaError, match="accepts no instance"):
        json_schema_to_regex(False)
    with pytest.raises(UnsupportedSchemaError, match="nests another without end"):
        json_schema_to_regex({"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]})
    with pytest.raises(UnsupportedSchemaError, match="max_regex_chars=1000"):
        json_schema_to_regex({"type": "object", "properties": {f"p{i}": {"type": "number"} for i in range(8)}},
                             options=SchemaOptions(max_regex_chars=1000))


TREE = {"$defs": {"node": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4},
                                                            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                           "required": ["name"]}}, "$ref": "#/$defs/node"}


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"name": "leaf"}
    for _ in range(depth - 1):
        node = {"name": "n", "children": [node, {"name": "x"}]}
    return node


def test_recursion_is_exact_up_to_the_frame_depth() -> None:
    result = json_schema_to_regex(TREE)
    assert [name for name, _ in result.rules] == ["r0"] and result.regex == "(?&r0)"
    fullmatch = _fullmatch(result)
    validator = _validator(TREE)
    for depth in (1, 4, 30, MAX_FRAME_DEPTH):
        assert validator.is_valid(_nested(depth)) and fullmatch(_compact(_nested(depth))), depth
    assert not fullmatch(_compact(_nested(MAX_FRAME_DEPTH + 1)))  # the documented bound
    assert not fullmatch('{"name": "n", "children": [{"name": "toolong"}]}')
    assert not fullmatch('{"name": "n", "children": [{"children": []}]}')


def test_a_reference_is_compiled_once_however_often_it_is_used() -> None:
    big = {"type": "object", "properties": {f"field_{i}": {"type": "string", "format": "date-time"} for i in range(12)}}
    schema = {"$defs": {"big": big}, "type": "object",
              "properties": {f"p{i}": {"$ref": "#/$defs/big"} for i in range(40)}}
    result = json_schema_to_regex(schema)
    assert len(result.rules) == 1 and result.regex.count("(?&r0)") >= 40  # an optional member is written twice
    assert len(result.text) < 4 * len(result.rules[0][1])  # the definition once, short calls (inlined: 79 copies)
    small = json_schema_to_regex({"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}})
    assert not small.rules  # small and not recursive: inlined, a flat regex
    fullmatch = _fullmatch(result)
    stamp = "2024-01-02T03:04:05Z"
    assert fullmatch(_compact({"p0": {"field_0": stamp}, "p39": {}})) and not fullmatch(_compact({"p0": {"field_0": "x"}}))


def test_references_that_blow_up_when_inlined_stay_small() -> None:
    """Each level references the one below twice: inlined, 2**12 copies (a 737k-character regex)."""
    defs: dict[str, Any] = {"d0": {"type": "string", "maxLength": 3}}
    for i in range(1, 13):
        ref = {"$ref": f"#/$defs/d{i - 1}"}
        defs[f"d{i}"] = {"type": "object", "properties": {"a": ref, "b": ref}, "required": ["a", "b"]}
    result = json_schema_to_regex({"$defs": defs, "$ref": "#/$defs/d12"})
    assert len(result.text) < 20_000
    fullmatch = _fullmatch(result)
    instance: Any = "abc"
    for _ in range(6):  # 64 leaves (each path through the tree is a context of its own to the automaton)
        instance = {"a": instance, "b": instance}
    fullmatch = _fullmatch(json_schema_to_regex({"$defs": defs, "$ref": "#/$defs/d6"}))
    assert fullmatch(_compact(instance)) and not fullmatch(_compact(instance).replace('"abc"', '"abcd"', 1))


def test_mutual_recursion_and_a_definition_that_needs_no_end() -> None:
    schema = {"$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/b"}, "maxItems": 2},
                        "b": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}
    fullmatch = _fullmatch(json_schema_to_regex(schema))
    assert fullmatch("[1, [2, [[3]]]]") and fullmatch("[]") and not fullmatch("[1, 2, 3]") and not fullmatch('["x"]')
    # An optional property whose schema can never end is simply never written.
    endless = {"$defs": {"e": {"type": "object", "properties": {"e": {"$ref": "#/$defs/e"}}, "required": ["e"]}},
               "type": "object", "properties": {"x": {"type": "integer"}, "never": {"$ref": "#/$defs/e"}}}
    fullmatch = _fullmatch(json_schema_to_regex(endless))
    assert fullmatch('{"x": 1}') and fullmatch("{}") and not fullmatch('{"never": {"e": {}}}')


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_integer_digits"):
        SchemaOptions(max_integer_digits=0)
    with pytest.raises(TypeError):
        SchemaOptions(unknown=1)  # type: ignore[call-arg]
    regex = json_schema_to_regex({"type": "integer"}, options=SchemaOptions(max_integer_digits=3)).regex
    assert re.fullmatch(regex, "-999") and not re.fullmatch(regex, "1000")


def test_many_optional_properties_stay_linear() -> None:
    def size(count: int) -> int:
        properties = {f"p{i}": {"type": "integer"} for i in range(count)}
        return len(json_schema_to_regex({"type": "object", "properties": properties}).regex)

    assert size(300) < 2.1 * size(150)
    properties = {f"p{i}": {"type": "integer"} for i in range(300)}
    regex = json_schema_to_regex({"type": "object", "properties": properties}).regex
    assert re.fullmatch(regex, '{"p3": 1, "p299": 2}') and not re.fullmatch(regex, '{"p299": 2, "p3": 1}')
    parse_regex(regex)  # the nesting is as deep as the properties are many


def test_bfcl_tools(data_dir: Path) -> None:
    stats: Counter[str] = Counter()
    failures: list[str] = []
    for path in sorted((data_dir / "bfcl").glob("*.jsonl")):
        for record in _load(path):
            # BFCL's reference answers, first accepted value per parameter, are instances of the tool's schema.
            answers: dict[str, list[Any]] = {}
            for call in record.get("possible_answer") or []:
                for bfcl_name, arguments in call.items():
                    instance = {key: values[0] for key, values in arguments.items()
                                if isinstance(values, list) and values and values[0] != ""}
                    answers.setdefault(bfcl_name, []).append(instance)
            for tool in record["tools"]:
                function = tool["function"]
                schema = function["parameters"]
                result = json_schema_to_regex(schema)
                stats["compiled"] += 1
                validator = _validator(schema)
                instances = answers.get(record["name_map"].get(function["name"], function["name"]), [])
                valid = [instance for instance in instances if validator.is_valid(instance)]
                _check_instances(schema, result, valid, [], stats, failures, record["id"])
    print(dict(stats))
    assert not failures, failures[:5]
    assert stats["valid matched"] >= 130  # 147 reference answers in the sample


def test_bench_sample_valid_instances_match(data_dir: Path) -> None:
    stats: Counter[str] = Counter()
    failures: list[str] = []
    for record in _bench_sample(data_dir):
        try:
            result = json_schema_to_regex(record["schema"])
        except UnsupportedSchemaError as error:
            stats[f"unsupported {error.keyword}"] += 1
            continue
        stats["compiled"] += 1
        valid = [test["data"] for test in record["tests"] if test["valid"]]
        invalid = [test["data"] for test in record["tests"] if not test["valid"]]
        _check_instances(record["schema"], result, valid, invalid, stats, failures, record["id"])
    print(dict(stats))
    assert not failures, failures[:5]
    assert stats["compiled"] >= 0.75 * NUM_BENCH_SAMPLE


def test_random_strings_validate(data_dir: Path) -> None:
    rng = random.Random(6)
    # All 244 BFCL schemas of the sample: as many as one in 4 of the full data set gave.
    schemas = [schema for _, schema in _bfcl_schemas(data_dir)] + [row[1] for row in CASES]
    schemas += [record["schema"] for record in _bench_sample(data_dir)[:150]]
    checked = 0
    for schema in schemas:
        try:
            result = json_schema_to_regex(schema)
        except UnsupportedSchemaError:
            continue
        if len(result.text) > 200_000:
            continue  # the sampler is quadratic-free but these take seconds each to parse in Python
        node, rules = parse_grammar(result.text)
        validator = _validator(schema)
        for _ in range(3):
            text = _sample(node, rng, rules)
            instance = json.loads(text)
            errors = [error.message for error in validator.iter_errors(instance)]
            assert not errors, (schema, text, errors)
            checked += 1
    assert checked > 300


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5) | \
        st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=2) |
                        st.dictionaries(st.text(max_size=3), inner, max_size=2), max_leaves=4)


def _strategy(schema: Any) -> st.SearchStrategy[Any]:
    """Instances of a schema: hypothesis-jsonschema for leaves, our own composition for objects (its object
    strategy does not run with the installed hypothesis)."""
    if schema is True or schema == {}:
        return _json_values()
    if not (isinstance(schema, dict) and (schema.get("type") == "object" or "properties" in schema)):
        return from_schema(schema)
    properties = {name: subschema for name, subschema in schema.get("properties", {}).items()
                  if subschema is not False}
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", not (properties or required))
    fixed = {name: _strategy(properties.get(name, additional if isinstance(additional, dict) else True))
             for name in required}
    optional = {name: _strategy(subschema) for name, subschema in properties.items() if name not in required}
    base = st.fixed_dictionaries(fixed, optional=optional)
    if additional is False:
        return base
    extra_keys = st.text(max_size=4).filter(lambda key: key not in properties and key not in required)
    extras = st.dictionaries(extra_keys, _strategy(additional if isinstance(additional, dict) else True), max_size=2)
    return st.tuples(base, extras).map(lambda pair: {**pair[0], **pair[1]})


# Left out: cases hypothesis-jsonschema cannot generate here (prefixItems, unions of objects, recursion) or
# whose formats it writes differently (date-time, ipv6) or does not know (byte: any string to it): the table and the real-data tests cover them.
HYPOTHESIS_SCHEMAS = [row[:2] for row in CASES if row[0] not in ("tagged oneOf", "allOf merge", "recursive ref",
                                                                  "root ref", "date-time", "ipv6", "prefix items",
                                                                  "base64 byte")]


def _check_generated_instances(schema: dict[str, Any]) -> None:
    fullmatch = _fullmatch(json_schema_to_regex(schema))
    validator = _validator(schema)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(instance=_strategy(schema))
    def check(instance: Any) -> None:
        if _out_of_bounds(instance) or not validator.is_valid(instance):
            return
        text = _compact(_declared_order(instance, schema, schema))
        if not text.isascii() and "\\d" in json.dumps(schema):
            return  # Python's re reads \d as Unicode digits; ECMA-262 (JSON Schema) and we read it as [0-9]
        assert fullmatch(text), text

    check()


@pytest.mark.parametrize("schema", [row[1] for row in HYPOTHESIS_SCHEMAS], ids=[row[0] for row in HYPOTHESIS_SCHEMAS])
def test_generated_instances_match(schema: dict[str, Any]) -> None:
    _check_generated_instances(schema)


def test_generated_instances_match_bfcl_tools(data_dir: Path) -> None:
    # One unique BFCL schema in 15 of the sample's 244: 17, as one in 60 of the full data set gave. A loop, not
    # parametrize: the data folder comes from a fixture, which collection cannot use.
    schemas = _bfcl_schemas(data_dir)[::15]
    assert len(schemas) >= 15
    for name, schema in schemas:
        try:
            _check_generated_instances(schema)
        except Exception as error:
            error.add_note(f"BFCL schema {name}")
            raise


def test_every_bench_schema_compiles_or_is_refused(data_dir: Path) -> None:
    reasons: Counter[str] = Counter()
    for record in _bench_records(data_dir):
        try:
            json_schema_to_regex(record["schema"])
            reasons["compiled"] += 1
        except UnsupportedSchemaError as error:
            reasons[error.keyword] += 1
    print(sys.getrecursionlimit(), reasons.most_common())
    # Of the sample's 230 records 211 compile and 19 are refused: both paths are taken, on enough records.
    num_refused = sum(reasons.values()) - reasons["compiled"]
    assert reasons["compiled"] >= 180 and num_refused >= 5


def test_compiling_leaves_the_schema_unchanged_and_gives_the_same_regex_twice() -> None:
    schema = {"allOf": [{"properties": {"a": {"type": "integer"}}, "additionalProperties": False},
                        {"properties": {"b": {"type": "string"}}, "additionalProperties": {"type": "string"}}]}
    before = json.dumps(schema)
    first = json_schema_to_regex(schema, strict=False).regex
    assert json.dumps(schema) == before and json_schema_to_regex(schema, strict=False).regex == first


def test_any_of_together_with_one_of_compiles_to_both() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "integer"}], "oneOf": [{"type": "string", "maxLength": 2}, {"type": "boolean"}]}
    compiled = re.compile(json_schema_to_regex(schema, strict=False).regex)  # it used to recurse without end
    assert compiled.fullmatch('"ab"') and not compiled.fullmatch('"abc"') and not compiled.fullmatch("1") and not compiled.fullmatch("true")
