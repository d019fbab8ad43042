"""Schemas combined without compiling them: `allOf` members merged into one schema, `oneOf` options told apart.

Invariant: `merge_two(a, b)` is a schema whose instances are those valid under both `a` and `b`; a keyword it
cannot merge is reported through `unsupported`, never dropped silently. `excludes(a, b)` is a sufficient check:
True only when no value the compiler generates for `a` is valid under `b` (so `oneOf` may compile as `anyOf`).
`schema_types` gives the JSON types a schema allows, from `type` or, without one, implied by its keywords.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from strictcall.grammars.errors import UnsupportedSchemaError

# Reports a keyword that cannot be enforced: (pointer, keyword, reason); raises with strict compilation.
Unsupported = Callable[[str, str, str], None]

JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

# Keywords that only annotate: never change which instances are valid.
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "id", "$comment", "deprecated",
    "readOnly", "writeOnly", "optional", "$anchor", "$vocabulary", "contentMediaType", "contentEncoding",
    "contentSchema", "definitions", "$defs", "nullable",
})
_KEYWORD_TYPES = {
    "object": ("properties", "required", "additionalProperties", "minProperties", "maxProperties",
               "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}


def schema_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema's `type` (or, without one, its keywords) allows; None: any type."""
    declared = schema.get("type")
    if declared is not None:
        names = {declared} if isinstance(declared, str) else set(declared)
        return names | {"integer"} if "number" in names else names
    implied = {kind for kind, keywords in _KEYWORD_TYPES.items() if any(keyword in schema for keyword in keywords)}
    if "number" in implied:
        implied.add("integer")
    return implied or None


def normalized(schema: dict[str, Any]) -> dict[str, Any]:
    """Draft-4 boolean exclusive bounds as draft-6 numbers; `const` as a one-value `enum`."""
    result = dict(schema)
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(result.get(exclusive), bool):
            if result.pop(exclusive) and inclusive in result:
                result[exclusive] = result.pop(inclusive)
    if "const" in result:
        const = result.pop("const")
        result["enum"] = [value for value in result.get("enum", [const]) if value == const and
                          type(value) is type(const)]
    return result


def merge_two(first: dict[str, Any], second: dict[str, Any], pointer: str, unsupported: Unsupported) -> dict[str, Any]:
    """One schema for `allOf: [first, second]` (both normalized); what must merge deeper becomes a nested `allOf`.

    Args:
        unsupported: reports a keyword the merge cannot enforce (`(pointer, keyword, reason)`; may raise).

    Raises:
        UnsupportedSchemaError: the merge would grow past its limit.
    """
    result = dict(first)
    for side, other in ((first, second), (second, first)):
        # A property declared on one side only must also satisfy the other side's additionalProperties.
        if "additionalProperties" in other and other["additionalProperties"] is not True:
            for name in side.get("properties", {}):
                if name not in other.get("properties", {}):
                    # A copy: the schemas being merged are the caller's and stay unchanged.
                    side_properties = result["properties"] = dict(result.get("properties", {}))
                    side_properties[name] = {"allOf": [side_properties.get(name, side["properties"][name]),
                                                       other["additionalProperties"]]}
    for key, value in second.items():
        if key not in result:
            result[key] = value
        elif key == "properties":
            properties = dict(result["properties"])
            for name, subschema in value.items():
                properties[name] = {"allOf": [properties[name], subschema]} if name in properties else subschema
            result[key] = properties
        elif key == "type":
            first_types, second_types = schema_types({"type": result[key]}), schema_types({"type": value})
            result[key] = sorted((first_types or set()) & (second_types or set()))
        elif key == "required":
            result[key] = list(dict.fromkeys([*result[key], *value]))
        elif key in ("additionalProperties", "items", "additionalItems") and isinstance(value, (dict, bool)) \
                and isinstance(result[key], (dict, bool)):
            result[key] = {"allOf": [result[key], value]}
        elif key == "enum":
            allowed = {json.dumps(item, sort_keys=True) for item in value}
            result[key] = [item for item in result[key] if json.dumps(item, sort_keys=True) in allowed]
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            result[key] = max(result[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            result[key] = min(result[key], value)
        elif key in ("anyOf", "oneOf"):
            product = [{"allOf": [left, right]} for left in result[key] for right in value]
            if len(product) > 64:
                raise UnsupportedSchemaError(pointer, "allOf", f"merging two '{key}' lists gives {len(product)} options (limit 64); "
                                              f"flatten the schema")
            result[key] = product
        elif key not in ANNOTATIONS and result[key] != value:
            unsupported(pointer, "allOf", f"cannot merge two different '{key}' values")
    return result


# oneOf: options that no generated value can satisfy together.
def _value_types(values: Iterable[Any]) -> set[str]:
    kinds = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object"}
    return {kinds[type(value)] for value in values}


def _constants(schema: dict[str, Any]) -> list[Any] | None:
    return schema.get("enum", [schema["const"]] if "const" in schema else None)


def _emitted_keys(schema: dict[str, Any]) -> set[str] | None:
    """The keys our regex for an object schema can write; None: unbounded (extra keys allowed)."""
    declared = "properties" in schema or "required" in schema
    if schema.get("additionalProperties", not declared) is not False or schema.get("patternProperties"):
        return None
    return set(schema.get("properties", {})) | set(schema.get("required", []))


def excludes(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether no value our regex generates for `first` is valid under `second` (a sufficient check)."""
    first_values, second_values = _constants(first), _constants(second)
    if first_values is not None and second_values is not None:
        dumped = {json.dumps(value, sort_keys=True) for value in second_values}
        return not any(json.dumps(value, sort_keys=True) in dumped for value in first_values)
    first_types = _value_types(first_values) if first_values is not None else schema_types(first)
    second_types = _value_types(second_values) if second_values is not None else schema_types(second)
    first_kinds = {"number" if name == "integer" else name for name in first_types or JSON_TYPES}
    second_kinds = {"number" if name == "integer" else name for name in second_types or JSON_TYPES}
    if not first_kinds & second_kinds:
        return True
    if first_kinds != {"object"}:
        return False
    keys = _emitted_keys(first)
    if keys is not None and not set(second.get("required", [])) <= keys:
        return True  # `second` requires a key we never write
    for name in first.get("required", []):  # a tag property: always written, with values `second` refuses
        tag, other = first.get("properties", {}).get(name), second.get("properties", {}).get(name)
        if isinstance(tag, dict) and isinstance(other, dict) and _constants(tag) is not None and \
                _constants(other) is not None and excludes(tag, other):
            return True
    return False
