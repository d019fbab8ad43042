"""BFCL's AST check, written from its rules (single-turn Python categories: simple, multiple, irrelevance).

A case passes when the model's calls match BFCL's `possible_answer`:
- irrelevance: no call at all;
- simple / multiple: exactly one call, to the expected function (the OpenAI name mapped back through the
  record's `name_map`), with every required parameter, no parameter that is not in the schema and the answer,
  every value among the accepted ones, and every omitted parameter accepted as omitted (`""` among its values);
- values: strings compare after BFCL's normalisation (lowercase; spaces and `,./-_*^` removed; `'` -> `"`),
  lists element-wise with the same normalisation, dicts key by key, lists of dicts in order; an int is
  accepted where a float is expected; a value of another type than the schema's is accepted only when it has
  the type of the accepted answers (BFCL's "variable" case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PYTHON_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}
_NORMALISE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    error: str = ""


def normalise(text: str) -> str:
    """BFCL's string normalisation: case, spacing and light punctuation do not count."""
    return _NORMALISE.sub("", text).lower().replace("'", '"')


def _normalised(value: Any) -> Any:
    return normalise(value) if isinstance(value, str) else value


def _answer_type(accepted: list[Any]) -> type | None:
    for answer in accepted:
        if answer != "":
            return type(answer)
    return None


def check_case(record: dict[str, Any], calls: list[tuple[str, Any]]) -> CheckResult:
    """Check one BFCL record against the model's calls `[(openai tool name, arguments)]`."""
    if not record.get("expect_tool_call", True):
        return CheckResult(not calls, "" if not calls else f"expected no call, got {len(calls)}")
    answers = record["possible_answer"]
    if len(calls) != len(answers):
        return CheckResult(False, f"wrong number of calls: {len(calls)}, expected {len(answers)}")
    name, arguments = calls[0]
    expected_name, accepted = next(iter(answers[0].items()))
    bfcl_name = record.get("name_map", {}).get(name, name)
    if bfcl_name != expected_name:
        return CheckResult(False, f"wrong function: {bfcl_name!r}, expected {expected_name!r}")
    if not isinstance(arguments, dict):
        return CheckResult(False, f"arguments are not an object: {arguments!r}")
    tool = next(t["function"] for t in record["tools"] if record.get("name_map", {}).get(t["function"]["name"], t["function"]["name"]) == expected_name)
    return check_arguments(tool.get("parameters", {}), arguments, accepted)


def check_arguments(schema: dict[str, Any], arguments: dict[str, Any], accepted: dict[str, list[Any]]) -> CheckResult:
    """BFCL's simple-function check of one call's arguments."""
    properties = schema.get("properties", {})
    for param in schema.get("required", []):
        if param not in arguments:
            return CheckResult(False, f"missing required parameter {param!r}")
    for param, value in arguments.items():
        if param not in properties or param not in accepted:
            return CheckResult(False, f"unexpected parameter {param!r}")
        result = check_value(param, value, properties[param], accepted[param])
        if not result.valid:
            return result
    for param, values in accepted.items():
        if param not in arguments and "" not in values:
            return CheckResult(False, f"parameter {param!r} omitted but not optional")
    return CheckResult(True)


def check_value(param: str, value: Any, schema: dict[str, Any], accepted: list[Any]) -> CheckResult:
    kind = schema.get("type", "string")
    expected = _PYTHON_TYPES.get(kind, str)
    if expected is float and type(value) is int:
        value = float(value)  # Python's int-to-float leniency
    answer_type = _answer_type(accepted)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is not expected:
        if answer_type is not None and type(value) is answer_type:
            is_variable = True
        else:
            return CheckResult(False, f"parameter {param!r}: expected {kind}, got {type(value).__name__} {value!r}")
    if not is_variable:
        if expected is dict:
            return _check_dict(param, value, accepted)
        if expected is list and schema.get("items", {}).get("type") == "object":
            return _check_list_of_dicts(param, value, accepted)
        if expected is str or expected is list:
            options = [_normalise_answer(a) for a in accepted if isinstance(a, (str, list))]
            if _normalise_answer(value) not in options:
                return CheckResult(False, f"parameter {param!r}: {value!r} is not among {accepted!r}")
            return CheckResult(True)
    if value not in accepted:
        return CheckResult(False, f"parameter {param!r}: {value!r} is not among {accepted!r}")
    return CheckResult(True)


def _normalise_answer(value: Any) -> Any:
    return [_normalised(v) for v in value] if isinstance(value, list) else _normalised(value)


def _check_dict(param: str, value: dict[str, Any], accepted: list[Any]) -> CheckResult:
    error = f"parameter {param!r}: {value!r} matches none of {accepted!r}"
    for answer in accepted:
        if not isinstance(answer, dict):
            continue
        keys_known = all(k in answer for k in value)
        values_ok = keys_known and all(_normalised(v) in [_normalised(a) for a in answer[k]] for k, v in value.items())
        omitted_ok = all(k in value or "" in options for k, options in answer.items())
        if values_ok and omitted_ok:
            return CheckResult(True)
    return CheckResult(False, error)


def _check_list_of_dicts(param: str, value: list[Any], accepted: list[Any]) -> CheckResult:
    for answer in accepted:
        if isinstance(answer, list) and len(answer) == len(value):
            if all(isinstance(v, dict) and _check_dict(param, v, [a]).valid for v, a in zip(value, answer)):
                return CheckResult(True)
    return CheckResult(False, f"parameter {param!r}: {value!r} matches none of {accepted!r}")
