"""strictcall's grammar engine, xgrammar and llguidance side by side on JSON Schemas (issue 6).

Same tokenizer (SmolLM2-135M-Instruct, 49,152 tokens), same schemas, same instances, same whitespace, one
worker process holding all three engines that takes each schema through each engine in turn, so the engines
see the same machine state. Data sets: every distinct BFCL tool `parameters` schema (simple + multiple, with
the ground-truth arguments as valid instances) and a deterministic sample of each JSONSchemaBench subset
(Github_easy, Glaiveai2K, Kubernetes: the first `--limit` by sha256(id); `--limit 0` for all) with its
MaskBench valid/invalid instances.

Per engine and data set:
- coverage: compiled / unsupported or refused (the engine reports it cannot compile the schema) / error (any
  other exception: a bug) / rejected a valid instance / accepted an invalid instance / timeout. A valid
  instance is serialized compactly (`json.dumps(x, ensure_ascii=False, separators=(", ", ": "))`) with keys
  in the schema's declared `properties` order, tokenized by the HF tokenizer, and walked token by token: it
  is rejected if a token is refused or the matcher does not accept at the end. jsonschema (with format
  checks) is the oracle: instances whose label it disputes are skipped.
- compile to first mask (cold): schema -> grammar -> matcher -> first `fill_next_token_bitmask`. Ours: a fresh
  `GrammarCompiler` per schema (the `Vocabulary` and its content tokens are per tokenizer and built once,
  timed separately as startup). xgrammar: `GrammarCompiler(max_threads=2, cache_enabled=False)` (2 = the
  cores here). llguidance: `grammar_from_json_schema` + `LLMatcher`.
- first-visit mask: ours, a fill at a DFA state whose mask is not cached yet; peers (no exposed state): every
  fill of the first walk over an instance. Cached mask: every fill of a second walk over the same instance.
  The per-step times of the first walk for every engine ("walk mask") are in the JSON output.

Whitespace, so that every engine allows exactly one layout: xgrammar `any_whitespace=False,
separators=(", ", ": ")`, strict_mode=True (its default: no undeclared properties, like ours); llguidance
`whitespace_flexible=False, item_separator=", ", key_separator=": "` (JSON Schema semantics: undeclared
properties allowed where `additionalProperties` is absent). Rejections of valid instances that carry
undeclared properties are counted apart ("extra keys"): that is a declared policy, not a bug.

Time limits: each (schema, engine) gets `--compile-timeout-s` (10 s) to its first mask and `--walk-timeout-s`
for its walks; the parent process watches the worker and kills and restarts it past a limit (native code
cannot be interrupted by a signal), recording a timeout.

    .venv/bin/python benchmarks/grammar_engines.py                 # BFCL + 250 per subset: about 4 minutes here
    .venv/bin/python benchmarks/grammar_engines.py --limit 0       # every schema (hours)
    .venv/bin/python benchmarks/grammar_engines.py --datasets bfcl --engines strictcall,xgrammar
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import JSB_SUBSETS, SchemaCase, add_data_argument, bfcl_schema_cases, data_dir, jsb_schema_cases  # noqa: E402
from layout import KeyOrderer, compact_json  # noqa: E402
from peers import Engines, LLGuidancePeer, XGrammarPeer, encode, load_engines  # noqa: E402
from report import code_version, fmt_ratio, fmt_startup, fmt_time, markdown_table, percentile  # noqa: E402

ENGINES = ("strictcall", "xgrammar", "llguidance")
DATASETS = ("bfcl",) + JSB_SUBSETS
DEFAULT_LIMIT = 250
MESSAGE = "@@"  # worker -> parent lines start with this (libraries may print to stdout too)


# --- engine adapters: compile to first mask, then a matcher interface ---------------------------------------


class Unsupported(Exception):
    """The engine says it cannot compile this schema (a documented refusal, not a crash)."""


class Ours:
    name = "strictcall"

    def __init__(self, engines: Engines):
        import numpy as np

        from strictcall.grammars.automaton import AutomatonLimitError
        from strictcall.grammars.compiler import GrammarCompiler
        from strictcall.grammars.json_schema import UnsupportedSchemaError
        from strictcall.grammars.matcher import GrammarMatcher

        self.vocabulary = engines.vocabulary
        self._compiler_cls, self._matcher_cls = GrammarCompiler, GrammarMatcher
        self._refusals = (UnsupportedSchemaError, AutomatonLimitError, ValueError)
        self.bitmask = np.zeros((1, self.vocabulary.num_words), dtype=np.int32)
        self.row = self.bitmask[0]

    def compile(self, schema: Any) -> Any:
        """Compile cold and fill the first mask; returns the grammar."""
        try:
            grammar = self._compiler_cls(self.vocabulary).compile_json_schema(schema, strict=True)
            matcher = self._matcher_cls(grammar)
        except self._refusals as error:
            raise Unsupported(f"{type(error).__name__}: {error}") from error
        matcher.fill_next_token_bitmask(self.bitmask, 0)
        return grammar

    def matcher(self, grammar: Any) -> Any:
        return self._matcher_cls(grammar)

    def is_first_visit(self, matcher: Any) -> bool:
        return not matcher.is_terminated() and not matcher.grammar.has_mask(matcher.state)

    def fill(self, matcher: Any) -> None:
        matcher.fill_next_token_bitmask(self.bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def is_accepting(self, matcher: Any) -> bool:
        return matcher.is_accepting()


class XGrammar(XGrammarPeer):
    name = "xgrammar"

    def __init__(self, engines: Engines):
        super().__init__(engines, cache_enabled=False)

    def compile(self, schema: Any) -> Any:
        try:
            grammar = self.compile_json_schema(schema)
            matcher = self.matcher(grammar)
        except (RuntimeError, ValueError, TypeError) as error:
            raise Unsupported(f"{type(error).__name__}: {str(error)[:300]}") from error
        self.fill(matcher)
        return grammar

    def is_first_visit(self, matcher: Any) -> bool:
        return True


class LLGuidance(LLGuidancePeer):
    name = "llguidance"

    def compile(self, schema: Any) -> Any:
        try:
            grammar = self.json_schema_grammar(schema)
        except ValueError as error:
            raise Unsupported(f"ValueError: {error}") from error
        matcher = self.matcher(grammar)
        if matcher.is_error():
            raise Unsupported(matcher.get_error()[:300])
        self.fill(matcher)
        return grammar

    def is_first_visit(self, matcher: Any) -> bool:
        return True


ADAPTERS = {"strictcall": Ours, "xgrammar": XGrammar, "llguidance": LLGuidance}


# --- the worker: every schema through every engine --------------------------------------------------------


def load_cases(root: Path, datasets: list[str], limit: int) -> list[tuple[str, SchemaCase]]:
    out: list[tuple[str, SchemaCase]] = []
    for dataset in datasets:
        cases = bfcl_schema_cases(root) if dataset == "bfcl" else jsb_schema_cases(root, dataset, limit)
        out += [(dataset, case) for case in cases]
    return out


def prepare_instances(case: SchemaCase, tokenizer: Any) -> dict[str, Any]:
    """Tokenized valid/invalid instances whose labels jsonschema (with format checks) agrees with."""
    import jsonschema

    orderer = KeyOrderer(case.schema)
    try:
        checker = jsonschema.validators.validator_for(case.schema)(case.schema, format_checker=jsonschema.FormatChecker())
    except Exception:  # noqa: BLE001
        checker = None

    def verdict(x: Any) -> bool | None:
        try:
            return None if checker is None else bool(checker.is_valid(x))
        except Exception:  # noqa: BLE001
            return None

    out: dict[str, Any] = {"valid": [], "invalid": [], "num_disputed": 0}
    for label, instances in (("valid", case.valid), ("invalid", case.invalid)):
        for instance in instances:
            if verdict(instance) is not (label == "valid"):
                out["num_disputed"] += 1
                continue
            ordered = orderer.reorder(instance)
            text = compact_json(ordered)
            out[label].append({"ids": encode(tokenizer, text), "extra_keys": _has_undeclared_keys(ordered, case.schema, orderer)})
    return out


def _has_undeclared_keys(instance: Any, schema: Any, orderer: KeyOrderer, depth: int = 0) -> bool:
    """Whether an object in the instance has a key its schema neither declares nor explicitly allows."""
    if depth > 32 or not isinstance(schema, dict):
        return False
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#"):
        target = orderer._resolve(schema["$ref"])
        if target is not None and _has_undeclared_keys(instance, target, orderer, depth + 1):
            return True
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key) or [] if isinstance(schema.get(key), list) else []:
            if orderer.is_valid(instance, branch) and _has_undeclared_keys(instance, branch, orderer, depth + 1):
                return True
    if isinstance(instance, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        if props and "additionalProperties" not in schema and any(k not in props for k in instance):
            return True
        return any(_has_undeclared_keys(v, props.get(k), orderer, depth + 1) for k, v in instance.items())
    if isinstance(instance, list):
        items = schema.get("items")
        return isinstance(items, dict) and any(_has_undeclared_keys(v, items, orderer, depth + 1) for v in instance)
    return False


def walk(adapter: Any, grammar: Any, ids: list[int], timings: dict[str, list[float]] | None, first_pass: bool) -> tuple[bool, int]:
    """Walk the tokens; returns (accepted, number of mask/accept disagreements)."""
    clock = time.perf_counter
    matcher = adapter.matcher(grammar)
    row = adapter.row
    disagreements = 0
    for token in ids:
        new_state = adapter.is_first_visit(matcher) if first_pass else False
        start = clock()
        adapter.fill(matcher)
        elapsed = clock() - start
        if timings is not None:
            if first_pass:
                timings["walk"].append(elapsed)
                if new_state:
                    timings["first_visit"].append(elapsed)
            else:
                timings["cached"].append(elapsed)
        allowed = bool((int(row[token >> 5]) >> (token & 31)) & 1)
        accepted = adapter.accept(matcher, token)
        disagreements += allowed != accepted
        if not accepted:
            return False, disagreements
    return adapter.is_accepting(matcher), disagreements


def run_case(adapter: Any, case: SchemaCase, instances: dict[str, Any], emit: Any, walk_budget_s: float) -> dict[str, Any]:
    emit({"event": "phase", "phase": "compile"})
    start = time.perf_counter()
    try:
        grammar = adapter.compile(case.schema)
    except Unsupported as error:
        return {"status": "unsupported", "message": str(error)[:300]}
    except Exception as error:  # noqa: BLE001 - a crash is a finding, not a reason to stop the benchmark
        return {"status": "error", "message": f"{type(error).__name__}: {str(error)[:300]}"}
    compile_s = time.perf_counter() - start
    emit({"event": "phase", "phase": "walk", "compile_s": compile_s})
    timings: dict[str, list[float]] = {"walk": [], "first_visit": [], "cached": []}
    result: dict[str, Any] = {
        "status": "compiled", "compile_s": compile_s, "num_valid": 0, "num_valid_rejected": 0,
        "num_valid_rejected_extra_keys": 0, "num_invalid": 0, "num_invalid_accepted": 0, "num_disagreements": 0,
        "walk_budget_exceeded": False, "num_disputed": instances["num_disputed"],
    }
    deadline = time.perf_counter() + walk_budget_s
    try:
        for item in instances["valid"]:
            if time.perf_counter() > deadline:
                result["walk_budget_exceeded"] = True
                break
            accepted, bad = walk(adapter, grammar, item["ids"], timings, first_pass=True)
            result["num_valid"] += 1
            result["num_disagreements"] += bad
            if accepted:
                walk(adapter, grammar, item["ids"], timings, first_pass=False)
            else:
                result["num_valid_rejected"] += 1
                result["num_valid_rejected_extra_keys"] += item["extra_keys"]
        for item in instances["invalid"]:
            if time.perf_counter() > deadline:
                result["walk_budget_exceeded"] = True
                break
            accepted, bad = walk(adapter, grammar, item["ids"], None, first_pass=True)
            result["num_invalid"] += 1
            result["num_disagreements"] += bad
            result["num_invalid_accepted"] += accepted
    except Exception as error:  # noqa: BLE001
        result["status"] = "error"
        result["message"] = f"walk: {type(error).__name__}: {str(error)[:300]}"
    result["timings"] = timings
    return result


def worker(args: argparse.Namespace) -> None:
    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(MESSAGE + json.dumps(message) + "\n")
        sys.stdout.flush()

    engines = load_engines(peers=any(e != "strictcall" for e in args.engines))
    adapters = [ADAPTERS[name](engines) for name in args.engines]
    gc.collect()
    gc.freeze()  # as the server does after loading: full collections skip the tokenizers' objects
    emit({"event": "startup", "startup_s": engines.startup_s})
    cases = load_cases(Path(args.data), args.datasets, args.limit)
    for index in range(args.start_case, len(cases)):
        dataset, case = cases[index]
        instances = prepare_instances(case, engines.tokenizer)
        first_engine = args.start_engine if index == args.start_case else 0
        for engine_index in range(first_engine, len(adapters)):
            adapter = adapters[engine_index]
            emit({"event": "begin", "case": index, "engine": engine_index})
            result = run_case(adapter, case, instances, emit, args.walk_timeout_s * 0.5)
            result.update(case=index, engine=engine_index, dataset=dataset, id=case.id)
            emit({"event": "result", "result": result})
    emit({"event": "done"})


# --- the parent: run the worker under time limits, summarize -----------------------------------------------


def supervise(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float], int]:
    """Run workers until every (case, engine) has a result; kill and restart on a timeout."""
    results: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    case_datasets = [dataset for dataset, _ in load_cases(Path(args.data), args.datasets, args.limit)]
    num_cases = len(case_datasets)
    start_case, start_engine = 0, 0
    num_restarts = 0
    base = [sys.executable, str(Path(__file__).resolve()), "--worker", "--limit", str(args.limit),
            "--datasets", ",".join(args.datasets), "--engines", ",".join(args.engines),
            "--walk-timeout-s", str(args.walk_timeout_s), "--data", args.data]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    last_progress = time.perf_counter()
    while True:
        command = base + ["--start-case", str(start_case), "--start-engine", str(start_engine)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        current: dict[str, Any] | None = None
        phase, phase_start, compile_s = "startup", time.perf_counter(), None
        finished = False
        try:
            while True:
                limit = {"startup": 120.0, "compile": args.compile_timeout_s, "walk": args.walk_timeout_s}.get(phase, 60.0)
                remaining = phase_start + limit - time.perf_counter()
                ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0.0))
                if not ready:
                    break  # timeout
                line = process.stdout.readline()
                if not line:
                    break  # worker died
                if not line.startswith(MESSAGE):
                    continue
                message = json.loads(line[len(MESSAGE):])
                event = message["event"]
                if event == "startup":
                    startup = startup or message["startup_s"]
                    phase = "idle"
                elif event == "begin":
                    current = message
                    phase, phase_start, compile_s = "idle", time.perf_counter(), None
                elif event == "phase":
                    phase, phase_start = message["phase"], time.perf_counter()
                    compile_s = message.get("compile_s", compile_s)
                elif event == "result":
                    results.append(message["result"])
                    current, phase = None, "idle"
                    if time.perf_counter() - last_progress > 15:
                        last_progress = time.perf_counter()
                        print(f"  ... {message['result']['case'] + 1}/{num_cases} schemas", file=sys.stderr, flush=True)
                elif event == "done":
                    finished = True
                    break
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if finished:
            return results, startup, num_restarts
        if current is None:
            raise RuntimeError(f"the worker failed outside a schema (phase {phase}); rerun with --worker to see why")
        num_restarts += 1
        case, engine = current["case"], current["engine"]
        dataset_name = case_datasets[case]
        status = "timeout" if phase in ("compile", "walk") else "error"
        record = {"case": case, "engine": engine, "dataset": dataset_name, "status": status, "phase": phase}
        if phase == "walk" and compile_s is not None:
            record["compile_s"] = compile_s
        results.append(record)
        print(f"  {args.engines[engine]}: case {case} {status} in phase {phase}; restarting the worker", file=sys.stderr, flush=True)
        start_case, start_engine = (case, engine + 1) if engine + 1 < len(args.engines) else (case + 1, 0)
        if start_case >= num_cases:
            return results, startup, num_restarts


def summarize(results: list[dict[str, Any]], engines: list[str], datasets: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for dataset in datasets:
        for engine_index, engine in enumerate(engines):
            rows = [r for r in results if r["dataset"] == dataset and r["engine"] == engine_index]
            compiled = [r for r in rows if r["status"] == "compiled"]
            compile_times = [r["compile_s"] for r in compiled]
            pooled: dict[str, list[float]] = {"walk": [], "first_visit": [], "cached": []}
            for r in compiled:
                for key in pooled:
                    pooled[key] += r.get("timings", {}).get(key, [])
            summary[f"{dataset}/{engine}"] = {
                "dataset": dataset, "engine": engine, "num_schemas": len(rows),
                "compiled": len(compiled),
                "unsupported": sum(r["status"] == "unsupported" for r in rows),
                "error": sum(r["status"] == "error" for r in rows),
                "timeout": sum(r["status"] == "timeout" for r in rows),
                "schemas_rejected_valid": sum(r["num_valid_rejected"] > 0 for r in compiled),
                "schemas_rejected_valid_only_extra_keys": sum(
                    r["num_valid_rejected"] > 0 and r["num_valid_rejected"] == r["num_valid_rejected_extra_keys"] for r in compiled
                ),
                "schemas_accepted_invalid": sum(r["num_invalid_accepted"] > 0 for r in compiled),
                "num_valid": sum(r["num_valid"] for r in compiled),
                "num_valid_rejected": sum(r["num_valid_rejected"] for r in compiled),
                "num_invalid": sum(r["num_invalid"] for r in compiled),
                "num_invalid_accepted": sum(r["num_invalid_accepted"] for r in compiled),
                "num_mask_accept_disagreements": sum(r["num_disagreements"] for r in compiled),
                "compile_p50_s": percentile(compile_times, 50),
                "compile_p90_s": percentile(compile_times, 90),
                "compile_max_s": max(compile_times) if compile_times else float("nan"),
                **{f"{key}_mask_{q}_s": percentile(values, int(q[1:])) for key, values in pooled.items() for q in ("p50", "p99")},
                **{f"num_{key}_masks": len(values) for key, values in pooled.items()},
            }
    return summary


def render(summary: dict[str, Any], engines: list[str], datasets: list[str]) -> str:
    header = ["data set", "engine", "schemas", "compiled", "unsupported", "error", "rejected valid (extra keys)",
              "accepted invalid", "timeout", "compile p50", "p90", "max", "first-visit mask p50", "p99",
              "cached mask p50", "p99"]
    rows: list[list[str]] = []
    t = fmt_time
    for dataset in datasets:
        for engine in engines:
            s = summary[f"{dataset}/{engine}"]
            rows.append([dataset, engine, str(s["num_schemas"]), str(s["compiled"]), str(s["unsupported"]), str(s["error"]),
                         f"{s['schemas_rejected_valid']} ({s['schemas_rejected_valid_only_extra_keys']})",
                         str(s["schemas_accepted_invalid"]), str(s["timeout"]),
                         t(s["compile_p50_s"]), t(s["compile_p90_s"]), t(s["compile_max_s"]),
                         t(s["first_visit_mask_p50_s"]), t(s["first_visit_mask_p99_s"]),
                         t(s["cached_mask_p50_s"]), t(s["cached_mask_p99_s"])])
        if "strictcall" in engines and len(engines) > 1:
            ours = summary[f"{dataset}/strictcall"]
            peers = [summary[f"{dataset}/{e}"] for e in engines if e != "strictcall"]

            def best(key: str) -> float:
                values = [p[key] for p in peers if p[key] == p[key]]
                return min(values) if values else float("nan")

            ratio_keys = ["compile_p50_s", "compile_p90_s", "compile_max_s", "first_visit_mask_p50_s", "first_visit_mask_p99_s",
                          "cached_mask_p50_s", "cached_mask_p99_s"]
            rows.append([dataset, "**ours / best peer**", "", "", "", "", "", "", ""]
                        + [fmt_ratio(ours[k], best(k)) for k in ratio_keys])
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="schemas per JSONSchemaBench subset (0: all); BFCL is always complete")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--compile-timeout-s", type=float, default=10.0)
    parser.add_argument("--walk-timeout-s", type=float, default=60.0)
    parser.add_argument("--out", default=".bench/grammar_engines.json")
    add_data_argument(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-case", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-engine", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.engines = [e for e in args.engines.split(",") if e]
    for name in args.datasets:
        if name not in DATASETS:
            parser.error(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    for name in args.engines:
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    args.data = str(data_dir(args.data))  # checked once here; the workers are given the folder by name
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    results, startup, num_restarts = supervise(args)
    summary = summarize(results, args.engines, args.datasets)
    elapsed = time.perf_counter() - started
    version = code_version()
    print(f"## Grammar engines: SmolLM2 tokenizer, compact whitespace, --limit {args.limit} per JSONSchemaBench subset\n")
    print(f"strictcall at {version}\n")
    print(fmt_startup(startup) + "\n")
    print(render(summary, args.engines, args.datasets))
    print("\n`rejected valid (extra keys)`: schemas with a valid instance rejected; in parentheses, those whose every rejected"
          "\ninstance has properties the schema does not declare (ours and xgrammar's strict mode forbid them by design)."
          f"\nMask/accept disagreements: {sum(s['num_mask_accept_disagreements'] for s in summary.values())} (must be 0)."
          f" Worker restarts (timeouts/crashes): {num_restarts}. Wall time {elapsed:.0f} s.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "timings"} for r in results]
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "startup_s": startup, "wall_s": elapsed, "code_version": version,
                               "summary": summary, "results": slim}, indent=1, default=str))
    print(f"\nJSON results: {out}")


if __name__ == "__main__":
    main()
