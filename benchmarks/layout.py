"""The one JSON layout every engine is held to, and the instances written in it.

Our grammars allow a single serialization: one space after ':' and ',', none elsewhere, object keys in the
schema's declared `properties` order. `compact_json` writes that whitespace and `KeyOrderer` that key order,
so a valid instance is the one text every engine (ours and the peers, set to the same separators in
`peers.py`) must accept.
"""

from __future__ import annotations

import json
from typing import Any

ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))


class KeyOrderer:
    """Reorders an instance's object keys into the schema's declared `properties` order (best effort).

    Follows local `$ref`s, `properties`, `additionalProperties`, `items`/`prefixItems`, `allOf`, and the
    first `anyOf`/`oneOf` branch the instance is valid under; keys not declared keep their order, after the
    declared ones.
    """

    def __init__(self, schema: Any):
        import jsonschema

        self.root = schema
        try:
            self.validator = jsonschema.validators.validator_for(schema)(schema) if isinstance(schema, dict) else None
        except Exception:  # noqa: BLE001 - an odd schema only loses the reordering
            self.validator = None

    def is_valid(self, instance: Any, schema: Any = None) -> bool | None:
        """jsonschema's verdict (format not checked), or None if it cannot tell."""
        if self.validator is None:
            return None
        try:
            v = self.validator if schema is None else self.validator.evolve(schema=schema)
            return bool(v.is_valid(instance))
        except Exception:  # noqa: BLE001
            return None

    def reorder(self, instance: Any, schema: Any = None, depth: int = 0) -> Any:
        schema = self.root if schema is None else schema
        if depth > 64 or not isinstance(schema, dict):
            return instance
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            target = self._resolve(ref)
            if target is not None:
                instance = self.reorder(instance, target, depth + 1)
        for sub in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
            instance = self.reorder(instance, sub, depth + 1)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list):
                for branch in branches:
                    if self.is_valid(instance, branch):
                        instance = self.reorder(instance, branch, depth + 1)
                        break
        if isinstance(instance, dict):
            props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            extra = schema.get("additionalProperties")
            out: dict[str, Any] = {}
            for key in props:
                if key in instance:
                    out[key] = self.reorder(instance[key], props[key], depth + 1)
            for key, value in instance.items():
                if key not in out:
                    out[key] = self.reorder(value, extra, depth + 1) if isinstance(extra, dict) else value
            return out
        if isinstance(instance, list):
            prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
            items = schema.get("items")
            if isinstance(items, list):  # draft 4-7 tuple form
                prefix, items = items, schema.get("additionalItems")
            return [
                self.reorder(x, prefix[i] if i < len(prefix) else items, depth + 1) if (i < len(prefix) or isinstance(items, dict)) else x
                for i, x in enumerate(instance)
            ]
        return instance

    def _resolve(self, ref: str) -> Any:
        node = self.root
        for part in ref.lstrip("#").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node
