"""BFCL function-calling evaluation against any OpenAI-compatible server (ours, vLLM, llama.cpp's, ...).

Sends the BFCL cases in ../shared/data/bfcl (another data folder: `--data DIR`) through the official `openai`
client and reports, per category: HTTP errors, calls present, arguments that parse, a name that was offered,
arguments valid under the tool's schema, AST accuracy (BFCL's rules, `bfcl_checker.py`), latency p50/p90 and
completion tokens.

Usage:
  .venv/bin/python benchmarks/bfcl.py --base-url http://127.0.0.1:8000/v1 [--api-key K]
      [--categories simple,multiple,irrelevance] [--tool-choice auto|required] [--limit N] [--offset K] [--data DIR]
      [--unconstrained]   # strictcall only: `"strictcall": {"constrained": false}` for the A/B comparison
      [--strictcall JSON] # strictcall only: any per-request extension, e.g. '{"jump_forward": false}'
Results: a Markdown table on stdout and a JSON file (--out, default .bench/bfcl-<label>.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bfcl_checker import check_case  # noqa: E402
from data import add_data_argument, bfcl_file, data_dir, read_jsonl  # noqa: E402
from report import fmt_percent  # noqa: E402


def load_cases(root: Path, category: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    records = list(read_jsonl(bfcl_file(root, category)))
    records = records[offset:]
    return records[:limit] if limit else records


def run_case(client: Any, model: str, record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One request; the calls, what they are worth, and what the request cost."""
    request: dict[str, Any] = {"model": model, "messages": record["messages"], "temperature": args.temperature, "max_tokens": args.max_tokens}
    if record["tools"]:
        request["tools"] = record["tools"]
        request["tool_choice"] = args.tool_choice
        if args.parallel_tool_calls != "default":
            # BFCL's single-turn categories here expect at most one call: say so, as a client would.
            request["parallel_tool_calls"] = args.parallel_tool_calls == "true" or "parallel" in record["category"]
    extension = {**args.strictcall, **({"constrained": False} if args.unconstrained else {})}
    if extension:
        request["extra_body"] = {"strictcall": extension}
    started = time.perf_counter()
    try:
        response = client.chat.completions.create(**request)
    except Exception as error:  # an HTTP or protocol error is a result here, not a crash
        return {"id": record["id"], "http_error": f"{type(error).__name__}: {error}"[:300]}
    latency = time.perf_counter() - started
    message = response.choices[0].message
    offered = {t["function"]["name"]: t["function"].get("parameters", {}) for t in record["tools"]}
    calls, parsed = [], []
    for call in message.tool_calls or []:
        entry = {"name": call.function.name, "arguments": call.function.arguments, "parses": False, "offered": call.function.name in offered, "valid": False}
        try:
            arguments = json.loads(call.function.arguments)
            entry["parses"] = True
            parsed.append((call.function.name, arguments))
            if entry["offered"]:
                validator = jsonschema.Draft202012Validator(offered[call.function.name], format_checker=jsonschema.FormatChecker())
                entry["valid"] = validator.is_valid(arguments)
        except json.JSONDecodeError:
            pass
        calls.append(entry)
    all_parse = len(parsed) == len(calls)
    ast = check_case(record, parsed) if all_parse else None
    return {
        "id": record["id"],
        "latency_s": latency,
        "completion_tokens": response.usage.completion_tokens if response.usage else None,
        "finish_reason": response.choices[0].finish_reason,
        "content": message.content,
        "calls": calls,
        "ast_valid": bool(ast and ast.valid),
        "ast_error": None if ast is None else ast.error,
    }


def summarize(category: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in results if "http_error" not in r]
    with_calls = [r for r in answered if r["calls"]]
    calls = [c for r in answered for c in r["calls"]]
    latencies = sorted(r["latency_s"] for r in answered)

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "category": category,
        "cases": len(results),
        "http_errors": len(results) - len(answered),
        "with_calls": share(len(with_calls), len(answered)),
        "calls": len(calls),
        "parse": share(sum(c["parses"] for c in calls), len(calls)),
        "offered": share(sum(c["offered"] for c in calls), len(calls)),
        "schema_valid": share(sum(c["valid"] for c in calls), len(calls)),
        "ast_accuracy": share(sum(r["ast_valid"] for r in answered), len(results)),
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p90_s": latencies[int(0.9 * (len(latencies) - 1))] if latencies else None,
        "completion_tokens_mean": statistics.mean(r["completion_tokens"] or 0 for r in answered) if answered else None,
        # How turns end: cut by max_tokens, with more than one call, with the same call twice.
        "finish_length": share(sum(r["finish_reason"] == "length" for r in answered), len(answered)),
        "several_calls": share(sum(len(r["calls"]) > 1 for r in answered), len(answered)),
        "repeated_calls": share(sum(len({(c["name"], c["arguments"]) for c in r["calls"]}) < len(r["calls"]) for r in answered), len(answered)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--categories", default="simple,multiple,irrelevance")
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"])
    parser.add_argument("--limit", type=int, default=100, help="cases per category (0: all)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many cases first (a held-out slice for tuning a setting)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--parallel-tool-calls", default="per-category", choices=["per-category", "true", "default"],
                        help="per-category: false for the single-call categories (simple, multiple, irrelevance); "
                             "default: do not send the field")
    parser.add_argument("--unconstrained", action="store_true", help="strictcall's A/B switch: no grammar for these requests")
    parser.add_argument("--strictcall", type=json.loads, default={}, metavar="JSON",
                        help='strictcall only: the per-request extension for every request, e.g. \'{"jump_forward": false}\'')
    parser.add_argument("--label", default=None)
    parser.add_argument("--out", default=None)
    add_data_argument(parser)
    args = parser.parse_args()
    root = data_dir(args.data)
    args.data = str(root)  # the JSON says which data folder the numbers come from
    for category in args.categories.split(","):
        bfcl_file(root, category)  # a missing file stops the run before the first request, not after a category

    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600, max_retries=0)
    model = args.model or client.models.list().data[0].id
    label = args.label or f"{model}-{args.tool_choice}{'-unconstrained' if args.unconstrained else ''}"
    summaries, details = [], {}
    started = time.perf_counter()
    for category in args.categories.split(","):
        cases = load_cases(root, category, args.limit, args.offset)
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda r: run_case(client, model, r, args), cases))
        summaries.append(summarize(category, results))
        details[category] = results
    elapsed = time.perf_counter() - started

    print(f"\n{label}: tool_choice={args.tool_choice}, parallel_tool_calls={args.parallel_tool_calls}, "
          f"temperature={args.temperature}, max_tokens={args.max_tokens}, {elapsed:.0f} s")
    print("| category | cases | HTTP errors | with calls | calls parse | name offered | schema-valid | AST accuracy | cut by length | several calls "
          "| a call repeated | latency p50 / p90 | completion tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summaries:
        latency = "-" if s["latency_p50_s"] is None else f"{s['latency_p50_s']:.2f} / {s['latency_p90_s']:.2f} s"
        tokens = "-" if s["completion_tokens_mean"] is None else f"{s['completion_tokens_mean']:.0f}"
        print(f"| {s['category']} | {s['cases']} | {s['http_errors']} | {fmt_percent(s['with_calls'])} | {fmt_percent(s['parse'])} | "
              f"{fmt_percent(s['offered'])} | {fmt_percent(s['schema_valid'])} | {fmt_percent(s['ast_accuracy'])} | {fmt_percent(s['finish_length'])} | "
              f"{fmt_percent(s['several_calls'])} | {fmt_percent(s['repeated_calls'])} | {latency} | {tokens} |")
    out = Path(args.out or f".bench/bfcl-{label.replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"label": label, "args": vars(args), "summaries": summaries, "results": details}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
