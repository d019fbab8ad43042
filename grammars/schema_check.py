"""Is it a JSON Schema at all? The check every schema passes before any use (the grammar, the tool prompt).

A schema whose keywords have the wrong types (`"properties": [...]`, `"required": 5`, `"minimum": "a"`), that
holds a number JSON cannot represent (1e999, NaN), or that nests too deeply is refused with an
`InvalidSchemaError` naming the JSON pointer, instead of failing somewhere inside the compiler.

Invariant: `check_schema` returns only for a schema valid under its own draft's meta-schema (2020-12 when it
names none), with finite numbers only; results are cached by the schema's text, bounded in bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema

from strictcall.grammars.cache import LruCache
from strictcall.grammars.errors import InvalidSchemaError

# Deeper schemas are refused (the meta-schema check and the compiler recurse; 130 levels overflowed Python's stack).
MAX_SCHEMA_DEPTH = 48
_checked: LruCache[tuple[InvalidSchemaError | None]] = LruCache(max_entries=4096, max_bytes=16 << 20)


def check_schema(schema: Any) -> None:
    """Refuse what is not a JSON Schema.

    Raises:
        InvalidSchemaError: a keyword of the wrong type, a non-finite number, too deep; `pointer` says where.
    """
    key = json.dumps(schema, ensure_ascii=False)
    result = _checked.get(key)
    if result is None:
        result = (_problem(schema),)
        _checked.put(key, result, len(key))
    if result[0] is not None:
        raise result[0]


def _problem(schema: Any) -> InvalidSchemaError | None:
    if not isinstance(schema, (dict, bool)):
        return InvalidSchemaError("", f"is not a JSON Schema: expected an object or a boolean, got {type(schema).__name__}")
    pending: list[tuple[Any, str, int]] = [(schema, "", 0)]
    while pending:
        value, pointer, depth = pending.pop()
        if depth > MAX_SCHEMA_DEPTH:
            return InvalidSchemaError(pointer, f"nests more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            return InvalidSchemaError(pointer, f"holds {value}, which JSON cannot represent")
        if isinstance(value, dict):
            pending += [(item, f"{pointer}/{_escape(str(key))}", depth + 1) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [(item, f"{pointer}/{i}", depth + 1) for i, item in enumerate(value)]
    draft = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    meta = draft(draft.META_SCHEMA, format_checker=draft.FORMAT_CHECKER)
    for error in meta.iter_errors(schema):
        # Repeated items (an enum listing a value twice) change nothing a grammar enforces; real schemas have them.
        if error.validator != "uniqueItems":
            pointer = "".join(f"/{_escape(str(part))}" for part in error.path)
            return InvalidSchemaError(pointer, f"is not valid JSON Schema: {error.message}")
    return None


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
