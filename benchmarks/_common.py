"""Shared helpers for the grammar benchmarks: the tokenizer and each engine's view of it, the evaluation data,
the compact serialization our grammars enforce, and percentile/table formatting.

Every engine is built from the same Hugging Face tokenizer (SmolLM2-135M-Instruct from the local GGUF), so
masks have the same width and instances tokenize identically for all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repository
BFCL_CATEGORIES = ("simple", "multiple")
JSB_SUBSETS = ("Github_easy", "Glaiveai2K", "Kubernetes")

# The whitespace every engine is given: one space after ':' and ',', none elsewhere (our grammar's only form).
ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "
XGRAMMAR_JSON_OPTIONS: dict[str, Any] = {"any_whitespace": False, "separators": (ITEM_SEPARATOR, KEY_SEPARATOR)}
LLGUIDANCE_JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ITEM_SEPARATOR,
    "key_separator": KEY_SEPARATOR,
}


# --- tokenizer and engines -------------------------------------------------------------------------------


@dataclass
class Engines:
    """The tokenizer and each engine's per-tokenizer object, with what each cost to build (paid once)."""

    tokenizer: Any
    vocabulary: Any
    vocab_size: int
    xgrammar_info: Any = None
    llguidance_tokenizer: Any = None
    startup_s: dict[str, float] = field(default_factory=dict)


def load_engines(peers: bool = True) -> Engines:
    """Load the SmolLM2 tokenizer and build our `Vocabulary` (content tokens included) and the peers' infos."""
    from transformers import AutoTokenizer

    from strictcall.grammars.vocabulary import Vocabulary, default_model_path

    startup: dict[str, float] = {}
    start = time.perf_counter()
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    startup["hf tokenizer (GGUF)"] = time.perf_counter() - start

    start = time.perf_counter()
    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    _ = vocabulary.content_tokens  # the padded byte matrix: per tokenizer, built once
    startup["strictcall Vocabulary + content_tokens"] = time.perf_counter() - start
    engines = Engines(tokenizer, vocabulary, vocabulary.vocab_size, startup_s=startup)
    if not peers:
        return engines

    import llguidance.hf
    import xgrammar

    start = time.perf_counter()
    engines.xgrammar_info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocabulary.vocab_size)
    startup["xgrammar TokenizerInfo"] = time.perf_counter() - start
    start = time.perf_counter()
    engines.llguidance_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocabulary.vocab_size)
    startup["llguidance LLTokenizer"] = time.perf_counter() - start
    return engines


def encode(tokenizer: Any, text: str) -> list[int]:
    """The canonical tokenization a model would emit for `text` (no BOS/EOS)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


# --- data --------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def schema_key(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


def bfcl_records(categories: tuple[str, ...] = BFCL_CATEGORIES) -> list[dict[str, Any]]:
    return [r for c in categories for r in read_jsonl(DATA_DIR / "bfcl" / f"{c}.jsonl")]


def bfcl_tools(categories: tuple[str, ...] = BFCL_CATEGORIES) -> list[dict[str, Any]]:
    """The BFCL tools (OpenAI shape), deduplicated by name (first occurrence kept), in file order."""
    seen: dict[str, dict[str, Any]] = {}
    for record in bfcl_records(categories):
        for tool in record["tools"]:
            seen.setdefault(tool["function"]["name"], tool)
    return list(seen.values())


def bfcl_reference_arguments(categories: tuple[str, ...] = BFCL_CATEGORIES) -> dict[str, dict[str, Any]]:
    """Per tool name, one reference argument object built from BFCL's ground truth (first accepted values)."""
    out: dict[str, dict[str, Any]] = {}
    for record in bfcl_records(categories):
        inverse = {bfcl: openai for openai, bfcl in (record.get("name_map") or {}).items()}
        for call in record.get("possible_answer") or []:
            for bfcl_name, params in call.items():
                name = inverse.get(bfcl_name, bfcl_name.replace(".", "_"))
                if name not in out:
                    out[name] = _first_accepted(params)
    return out


def _first_accepted(params: dict[str, list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, accepted in params.items():
        values = [v for v in accepted if v != ""] if isinstance(accepted, list) else [accepted]
        if not values:
            continue  # may be omitted
        value = values[0]
        if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
            value = _first_accepted(value)
        out[key] = value
    return out


@dataclass
class SchemaCase:
    """One schema to compile, with instances to walk: valid ones must be accepted, invalid ones refused."""

    id: str
    schema: Any
    valid: list[Any]
    invalid: list[Any]


def bfcl_schema_cases() -> list[SchemaCase]:
    """Every distinct BFCL `parameters` schema, with the reference arguments of the tools that use it."""
    answers = bfcl_reference_arguments()
    cases: dict[str, SchemaCase] = {}
    for tool in bfcl_tools():
        function = tool["function"]
        schema = function.get("parameters", {"type": "object", "properties": {}})
        key = schema_key(schema)
        case = cases.setdefault(key, SchemaCase(f"bfcl/{function['name']}", schema, [], []))
        if function["name"] in answers:
            case.valid.append(answers[function["name"]])
    return list(cases.values())


def jsb_schema_cases(subset: str, limit: int) -> list[SchemaCase]:
    """A deterministic sample of a JSONSchemaBench subset: the first `limit` by sha256(id) (0: all), file order."""
    records = list(read_jsonl(DATA_DIR / "jsonschemabench" / f"{subset}.jsonl"))
    if limit:
        chosen = set(sorted((hashlib.sha256(r["id"].encode()).hexdigest(), r["id"]) for r in records)[:limit])
        records = [r for r in records if (hashlib.sha256(r["id"].encode()).hexdigest(), r["id"]) in chosen]
    return [
        SchemaCase(
            r["id"],
            r["schema"],
            [t["data"] for t in r["tests"] if t["valid"]],
            [t["data"] for t in r["tests"] if not t["valid"]],
        )
        for r in records
    ]


# --- the compact serialization our grammars enforce --------------------------------------------------------


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


# --- statistics and tables ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="nearest"))


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps 2-3 significant digits."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(ours: float, peer: float) -> str:
    if ours is None or peer is None or math.isnan(ours) or math.isnan(peer) or peer <= 0:
        return "-"
    return f"{ours / peer:.2g}x"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def code_version() -> str:
    """The commit the engine code is at, and which of its files differ from it (others edit them concurrently)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "grammars"], cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
