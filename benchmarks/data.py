"""The evaluation data the benchmarks read: BFCL cases and JSONSchemaBench schemas, from one folder.

The folder is the full data set in `../shared/data` beside the repository unless a script's `--data DIR` names
another; every reader takes the folder as its first argument, so no script spells a path of its own. A missing
folder or file ends the script with one line saying what was looked for and how to name another folder. There
is no silent fallback to the small sample in `tests/data`: numbers measured on it (100 BFCL simple cases, not
400) would read like the full benchmark's. `--data tests/data` runs on it on purpose, with a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repository
SAMPLE_DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"  # the tests' fixed sample
BFCL_CATEGORIES = ("simple", "multiple")
JSB_SUBSETS = ("Github_easy", "Glaiveai2K", "Kubernetes")
_HOW_TO_CHOOSE = "pass --data DIR, a folder holding bfcl/ and jsonschemabench/ (the repository's tests/data is a small sample)"


# --- the folder ---------------------------------------------------------------------------------------------


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """The `--data DIR` option every data-reading benchmark takes (a string, so `vars(args)` stays JSON)."""
    parser.add_argument("--data", default=None, metavar="DIR",
                        help=f"the evaluation data folder, holding bfcl/ and jsonschemabench/ (default: {DEFAULT_DATA_DIR})")


def data_dir(path: str | Path | None = None) -> Path:
    """The data folder to read: `path`, or ../shared/data beside the repository.

    Exits with one line (no traceback) if the folder is not there; warns on stderr if it is the tests' sample.
    """
    root = DEFAULT_DATA_DIR if path is None else Path(path)
    if not root.is_dir():
        where = " (the default: ../shared/data beside the repository)" if path is None else ""
        sys.exit(f"no evaluation data folder at {root}{where}; {_HOW_TO_CHOOSE}")
    if root.resolve() == SAMPLE_DATA_DIR:
        print(f"warning: reading the tests' small sample in {root}, not the full data set: the numbers are not the benchmark's",
              file=sys.stderr)
    return root


def data_file(root: Path, *parts: str) -> Path:
    """A file of the data folder; exits with one line if it is missing."""
    path = root.joinpath(*parts)
    if not path.is_file():
        sys.exit(f"no {'/'.join(parts)} in the evaluation data folder {root}; {_HOW_TO_CHOOSE}")
    return path


def bfcl_file(root: Path, category: str) -> Path:
    return data_file(root, "bfcl", f"{category}.jsonl")


# --- readers --------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def schema_key(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


def bfcl_records(root: Path, categories: tuple[str, ...] = BFCL_CATEGORIES) -> list[dict[str, Any]]:
    return [r for c in categories for r in read_jsonl(bfcl_file(root, c))]


def bfcl_tools(root: Path, categories: tuple[str, ...] = BFCL_CATEGORIES) -> list[dict[str, Any]]:
    """The BFCL tools (OpenAI shape), deduplicated by name (first occurrence kept), in file order."""
    seen: dict[str, dict[str, Any]] = {}
    for record in bfcl_records(root, categories):
        for tool in record["tools"]:
            seen.setdefault(tool["function"]["name"], tool)
    return list(seen.values())


def bfcl_reference_arguments(root: Path, categories: tuple[str, ...] = BFCL_CATEGORIES) -> dict[str, dict[str, Any]]:
    """Per tool name, one reference argument object built from BFCL's ground truth (first accepted values)."""
    out: dict[str, dict[str, Any]] = {}
    for record in bfcl_records(root, categories):
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


def bfcl_schema_cases(root: Path) -> list[SchemaCase]:
    """Every distinct BFCL `parameters` schema, with the reference arguments of the tools that use it."""
    answers = bfcl_reference_arguments(root)
    cases: dict[str, SchemaCase] = {}
    for tool in bfcl_tools(root):
        function = tool["function"]
        schema = function.get("parameters", {"type": "object", "properties": {}})
        key = schema_key(schema)
        case = cases.setdefault(key, SchemaCase(f"bfcl/{function['name']}", schema, [], []))
        if function["name"] in answers:
            case.valid.append(answers[function["name"]])
    return list(cases.values())


def jsb_schema_cases(root: Path, subset: str, limit: int) -> list[SchemaCase]:
    """A deterministic sample of a JSONSchemaBench subset: the first `limit` by sha256(id) (0: all), file order."""
    records = list(read_jsonl(data_file(root, "jsonschemabench", f"{subset}.jsonl")))
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
