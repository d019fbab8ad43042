"""JSON Schemas end to end at the token level, on real data: BFCL tools and a JSONSchemaBench sample.

- every valid instance, serialized compactly in declared key order and tokenized canonically by the SmolLM2
  tokenizer, is accepted token by token and ends accepting;
- random walks (a random allowed token at each step, pulled toward the end once long) give JSON that
  `jsonschema` validates, with format checks;
- our masks equal outlines-core's eager `Index` built from the same regex and vocabulary, at every state
  along valid instances (small BFCL schemas: its index is eager and slow on large ones).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.errors import GrammarError
from strictcall.grammars.json_schema import json_schema_to_regex
from strictcall.grammars.masks import unpack_token_bitmask
from strictcall.grammars.matcher import GrammarMatcher
from strictcall.grammars.vocabulary import Vocabulary


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def declared_order(value: Any, schema: Any) -> Any:
    """Object keys in the order the schema declares them (our grammar's order), recursively."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        ordered = {k: declared_order(value[k], properties[k]) for k in properties if k in value}
        ordered.update({k: v for k, v in value.items() if k not in properties})
        return ordered
    if isinstance(value, list):
        return [declared_order(v, schema.get("items", {})) for v in value]
    return value


def bfcl_cases(data_dir: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(tool name, parameters schema, a reference arguments object) for each BFCL simple/multiple case."""
    cases = []
    for category in ("simple", "multiple"):
        with open(data_dir / "bfcl" / f"{category}.jsonl") as f:
            for line in f:
                record = json.loads(line)
                expected, accepted = next(iter(record["possible_answer"][0].items()))
                name = {v: k for k, v in record["name_map"].items()}.get(expected, expected)
                tool = next(t["function"] for t in record["tools"] if t["function"]["name"] == name)
                arguments = {p: _first(next(v for v in values if v != "")) for p, values in accepted.items() if values != [""]}
                cases.append((name, tool["parameters"], declared_order(arguments, tool["parameters"])))
    return cases


def _first(answer: Any) -> Any:
    if isinstance(answer, dict):
        return {k: _first(v[0]) for k, v in answer.items() if v[0] != ""}
    return answer


def walk_text(matcher: GrammarMatcher, ids: list[int]) -> bool:
    return all(matcher.accept_token(t) for t in ids) and matcher.is_accepting()


@pytest.fixture(scope="module")
def compiler(smollm2_vocabulary: Vocabulary) -> GrammarCompiler:
    return GrammarCompiler(smollm2_vocabulary)


def test_bfcl_reference_arguments_are_accepted_token_by_token(compiler, smollm2_tokenizer, data_dir: Path) -> None:
    num_checked = 0
    for name, schema, arguments in bfcl_cases(data_dir):
        if not jsonschema.Draft202012Validator(schema).is_valid(arguments):
            continue  # BFCL answers that are not instances of the converted schema (the data README counts 0)
        grammar = compiler.compile_json_schema(schema, strict=False)
        text = compact(arguments)
        assert walk_text(GrammarMatcher(grammar), smollm2_tokenizer.encode(text, add_special_tokens=False)), (name, text)
        num_checked += 1
    assert num_checked >= 140  # of the 150 simple and multiple cases in the sample


def jsb_sample(data_dir: Path, count: int) -> list[dict[str, Any]]:
    records = []
    for subset in ("Github_easy", "Glaiveai2K", "Kubernetes"):
        with open(data_dir / "jsonschemabench" / f"{subset}.jsonl") as f:
            records += [json.loads(line) for line in f]
    random.Random(6).shuffle(records)
    return [r for r in records if any(t["valid"] for t in r["tests"])][:count]


def test_jsonschemabench_valid_instances_are_accepted_token_by_token(compiler, smollm2_tokenizer, data_dir: Path) -> None:
    num_checked = 0
    for record in jsb_sample(data_dir, 120):
        try:
            grammar = compiler.compile_json_schema(record["schema"])
        except GrammarError:
            continue
        for test in record["tests"]:
            data = declared_order(test["data"], record["schema"])
            validator = jsonschema.validators.validator_for(record["schema"])(record["schema"], format_checker=jsonschema.FormatChecker())
            if not test["valid"] or not validator.is_valid(data):
                continue
            try:
                json_schema_to_regex(record["schema"])  # instances with undeclared keys are outside our subset
                text = compact(data)
            except (GrammarError, ValueError):  # ValueError: a value JSON cannot write (NaN)
                continue
            if _has_undeclared_keys(data, record["schema"]):
                continue
            assert walk_text(GrammarMatcher(grammar), smollm2_tokenizer.encode(text, add_special_tokens=False)), (record["id"], text[:200])
            num_checked += 1
    assert num_checked >= 60


def _has_undeclared_keys(value: Any, schema: Any) -> bool:
    if not isinstance(schema, dict) or "$ref" in schema or any(k in schema for k in ("anyOf", "oneOf", "allOf")):
        return isinstance(value, (dict, list))  # not followed here: skip such instances rather than guess
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") not in (None, False) and "properties" in schema:
            return True
        return any(k not in properties or _has_undeclared_keys(v, properties[k]) for k, v in value.items()) if properties or value else False
    if isinstance(value, list):
        return any(_has_undeclared_keys(v, schema.get("items", {})) for v in value)
    return False


def random_instance(grammar, vocabulary: Vocabulary, rng: np.random.Generator, max_steps: int = 300) -> str | None:
    matcher = GrammarMatcher(grammar)
    eos = set(vocabulary.eos_token_ids)
    data = b""
    for step in range(max_steps):
        allowed = unpack_token_bitmask(matcher.next_token_bitmask(), vocabulary.vocab_size)
        if step < 40:
            token = int(rng.choice(allowed))
        else:  # toward the end: the candidate that leaves the fewest bytes to go
            scored = []
            for candidate in set(rng.choice(allowed, size=min(16, len(allowed))).tolist()) | (eos & set(allowed.tolist())):
                assert matcher.accept_token(candidate)
                scored.append((matcher.min_bytes_to_end(), candidate))
                matcher.rollback(1)
            token = min(scored)[1]
        assert matcher.accept_token(token)
        if token in eos:
            return data.decode("utf-8")
        data += vocabulary.token_bytes[token]
    return None


def test_random_walks_give_valid_instances(compiler, smollm2_vocabulary: Vocabulary, data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    # One BFCL case in 6 of the sample's 150: 25 schemas, as many as one in 25 of the full data set gave.
    schemas = [schema for _, schema, _ in bfcl_cases(data_dir)[::6]] + [r["schema"] for r in jsb_sample(data_dir, 40)]
    num_valid = 0
    for schema in schemas:
        try:
            grammar = compiler.compile_json_schema(schema)
        except GrammarError:
            continue
        text = random_instance(grammar, smollm2_vocabulary, rng)
        if text is None:
            continue
        validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
        assert validator.is_valid(json.loads(text)), text[:300]
        num_valid += 1
    assert num_valid >= 40


RECURSIVE_SCHEMAS = [
    {"$defs": {"node": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                         "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                        "required": ["name", "children"]}}, "$ref": "#/$defs/node"},
    {"$defs": {"expr": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {
        "op": {"enum": ["+", "*"]}, "args": {"type": "array", "items": {"$ref": "#/$defs/expr"}, "minItems": 2, "maxItems": 2}},
        "required": ["op", "args"]}]}}, "$ref": "#/$defs/expr"},
]


def test_random_walks_through_recursive_schemas_give_valid_instances(compiler, smollm2_vocabulary: Vocabulary) -> None:
    """Rules called from inside themselves (a tree, an expression): every finished walk is a valid instance, and
    the walks do nest (the mask lets tokens cross into and out of rule calls)."""
    rng = np.random.default_rng(1)
    depths = []
    for schema in RECURSIVE_SCHEMAS:
        grammar = compiler.compile_json_schema(schema)
        validator = jsonschema.validators.validator_for(schema)(schema)
        for _ in range(12):
            text = random_instance(grammar, smollm2_vocabulary, rng, max_steps=400)
            if text is not None:
                assert validator.is_valid(json.loads(text)), text[:300]
                depths.append(text.count("{"))
    assert len(depths) >= 12 and max(depths) >= 3


def test_non_ascii_values_can_be_generated(compiler, smollm2_tokenizer) -> None:
    grammar = compiler.compile_json_schema({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    text = compact({"city": "東京 é 🙂 naïve"})
    assert walk_text(GrammarMatcher(grammar), smollm2_tokenizer.encode(text, add_special_tokens=False))


def test_masks_equal_outlines_core_on_small_bfcl_schemas(compiler, smollm2_vocabulary: Vocabulary, smollm2_tokenizer, data_dir: Path) -> None:
    import outlines_core

    eos = smollm2_vocabulary.eos_token_ids[0]
    token_map: dict[bytes, list[int]] = {}
    partial = set()
    for token_id, data in enumerate(smollm2_vocabulary.token_bytes):
        if data and token_id != eos:
            token_map.setdefault(data, []).append(token_id)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                partial.add(token_id)  # outlines-core refuses these in accepting states (see test_grammar_engine)
    vocabulary = outlines_core.Vocabulary(eos, token_map)
    small = [c for c in bfcl_cases(data_dir) if len(json_schema_to_regex(c[1], strict=False).regex) < 600][:6]
    assert len(small) == 6
    for name, schema, arguments in small:
        regex = json_schema_to_regex(schema, strict=False).regex
        index = outlines_core.Index(regex, vocabulary)
        ours = GrammarMatcher(compiler.compile_regex(regex))
        theirs = index.get_initial_state()
        for token in smollm2_tokenizer.encode(compact(arguments), add_special_tokens=False) + [None]:
            our_ids = set(unpack_token_bitmask(ours.next_token_bitmask(), smollm2_vocabulary.vocab_size).tolist())
            their_ids = set(index.get_allowed_tokens(theirs))
            ends = set(smollm2_vocabulary.eos_token_ids)
            assert our_ids - ends - partial == their_ids - ends - partial, name
            assert bool(our_ids & ends) == (eos in their_ids), name
            if token is None:
                break
            assert ours.accept_token(token)
            theirs = index.get_next_state(theirs, token)
