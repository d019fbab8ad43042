"""Concurrent load with tools against any OpenAI-compatible server (ours, vLLM, llama.cpp's server, ...).

For each concurrency level, a bounded closed loop: `clients` clients each send their next request as soon as
their last one finished, until the level's fixed number of requests (default max(8, 2 x clients)) has been
sent. Requests are BFCL cases (OpenAI `messages` + `tools`, ../shared/data/bfcl/simple.jsonl by default),
streamed through the official `openai` client with `stream_options: {"include_usage": true}`, so the time to
the first token is seen by the client as a user would see it. Every request of a run is a distinct case
(levels and variants take consecutive slices of the file), so no server answers from a prefix cache of an
earlier identical prompt. The default tool_choice is `required`: every request makes a call.

Reported per level: requests/s and output tokens/s (aggregate: completed requests and their completion tokens
over the level's wall time), TTFT p50/p90 (first chunk that carries content or tool-call data), TPOT p50/p90
(per request: the time after the first token over the output tokens after the first), end-to-end latency p50,
HTTP/protocol errors (count and the first message), the share of requests with tool calls and the share of
those whose tool calls all parse as JSON, and each level's req/s against the lowest level's. Completion tokens
come from the usage chunk; a server that sends none has its content/tool-call chunks counted instead (the
table says so). Errors are results: a failed request is counted and the run goes on.

strictcall only: `--unconstrained` sends `"strictcall": {"constrained": false}` (its A/B switch, no grammar);
`--ab` runs every level both ways, interleaved, and adds a side-by-side table with ratios (default/unconstrained).

Usage:
  .venv/bin/python benchmarks/serve_load.py --base-url http://127.0.0.1:8000/v1 [--api-key K] [--model M]
      [--concurrency 1,4,16] [--requests N] [--max-tokens 160] [--tool-choice required|auto]
      [--unconstrained | --ab] [--data PATH] [--label L] [--out PATH]
Results: a Markdown table on stdout and a JSON file (--out, default .bench/serve_load-<label>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import bfcl_file, data_dir, read_jsonl  # noqa: E402
from report import fmt_percent, fmt_time, markdown_table, percentile, ratio  # noqa: E402

DEFAULT = "default"  # the request as a client sends it (on strictcall: constrained)
UNCONSTRAINED = "unconstrained"


# --- one request ---------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    """What one streamed request cost and returned; times in seconds from the level's start."""

    case_id: str
    start_s: float
    end_s: float = math.nan
    first_token_s: float | None = None
    completion_tokens: int | None = None
    tokens_from: str = "usage"  # or "chunks": the server sent no usage chunk
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    content_chars: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)  # name, arguments, parses
    error: str | None = None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; undefined with fewer than two tokens."""
        if self.first_token_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.end_s - self.first_token_s) / (self.completion_tokens - 1)


def build_request(model: str, case: dict[str, Any], args: argparse.Namespace, unconstrained: bool) -> dict[str, Any]:
    """The chat request for one case, as any OpenAI-compatible server takes it."""
    request: dict[str, Any] = {"model": model, "messages": case["messages"], "max_tokens": args.max_tokens,
                               "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True}}
    if case.get("tools"):
        request["tools"] = case["tools"]
        request["tool_choice"] = args.tool_choice
        if args.parallel_tool_calls != "omit":
            request["parallel_tool_calls"] = args.parallel_tool_calls == "true"
    if unconstrained:
        request["extra_body"] = {"strictcall": {"constrained": False}}
    return request


def _add_tool_call_delta(calls: dict[int, dict[str, Any]], tool_call: Any) -> None:
    """Accumulate one streamed tool-call piece (the name comes once, the arguments in pieces)."""
    index = tool_call.index
    if index is None:  # some servers leave it out: a piece with an id starts a new call
        index = len(calls) if (tool_call.id is not None or not calls) else max(calls)
    entry = calls.setdefault(index, {"name": "", "arguments": ""})
    function = tool_call.function
    if function is not None:
        if function.name and not entry["name"]:
            entry["name"] = function.name
        entry["arguments"] += function.arguments or ""


def parses(arguments: str) -> bool:
    try:
        json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return False
    return True


async def send_one(client: Any, request: dict[str, Any], case_id: str, t0: float) -> RequestResult:
    """One streamed request; an HTTP or protocol error is recorded, never raised."""
    result = RequestResult(case_id, time.perf_counter() - t0)
    calls: dict[int, dict[str, Any]] = {}
    chunks = 0
    saw_usage = False
    try:
        stream = await client.chat.completions.create(**request)
        async for chunk in stream:
            now = time.perf_counter() - t0
            if chunk.usage is not None:
                saw_usage = True
                result.completion_tokens = chunk.usage.completion_tokens
                result.prompt_tokens = chunk.usage.prompt_tokens
                details = getattr(chunk.usage, "prompt_tokens_details", None)
                result.cached_tokens = getattr(details, "cached_tokens", None)
            for choice in chunk.choices or []:
                delta = choice.delta
                if delta is not None and (delta.content or delta.tool_calls):
                    chunks += 1
                    if result.first_token_s is None:
                        result.first_token_s = now
                    result.content_chars += len(delta.content or "")
                    for tool_call in delta.tool_calls or []:
                        _add_tool_call_delta(calls, tool_call)
                if choice.finish_reason is not None:
                    result.finish_reason = choice.finish_reason
        if result.finish_reason is None:
            result.error = "protocol: the stream ended without a finish_reason"
    except Exception as error:  # noqa: BLE001 - an HTTP or protocol error is a result here, not a crash
        result.error = f"{type(error).__name__}: {error}"[:300]
    result.end_s = time.perf_counter() - t0
    if not saw_usage or result.completion_tokens is None:
        result.tokens_from, result.completion_tokens = "chunks", chunks
    result.calls = [{**calls[i], "parses": parses(calls[i]["arguments"])} for i in sorted(calls)]
    return result


# --- one level: a bounded closed loop --------------------------------------------------------------------


async def run_level(client: Any, requests: list[tuple[str, dict[str, Any]]], clients: int) -> tuple[list[RequestResult], float]:
    """`clients` clients share the request list; each takes the next one when its last finished. Returns the
    results in request order and the level's wall time (first send to last finish)."""
    pending: Iterator[int] = iter(range(len(requests)))  # shared: next() is atomic between awaits
    results: list[RequestResult | None] = [None] * len(requests)
    t0 = time.perf_counter()

    async def client_loop() -> None:
        for k in pending:
            case_id, request = requests[k]
            results[k] = await send_one(client, request, case_id, t0)

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return [r for r in results if r is not None], time.perf_counter() - t0


# --- statistics ----------------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _pct(values: list[float], q: float) -> float | None:
    return None if not values else percentile(values, q)


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict[str, Any]:
    """A level's numbers; latencies over the requests that succeeded, rates over the level's wall time."""
    ok = [r for r in results if r.error is None]
    errors = [r for r in results if r.error is not None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
    e2e = [r.e2e_s for r in ok]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    with_calls = [r for r in ok if r.calls]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None and r.prompt_tokens is not None]
    finish: dict[str, int] = {}
    for r in ok:
        finish[str(r.finish_reason)] = finish.get(str(r.finish_reason), 0) + 1
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p90_s": _pct(tpot, 90),
        "e2e_p50_s": _pct(e2e, 50), "e2e_p90_s": _pct(e2e, 90),
        "completion_tokens": tokens,
        "completion_tokens_mean": tokens / len(ok) if ok else None,
        "tokens_counted_from_chunks": sum(r.tokens_from == "chunks" for r in ok),
        "with_calls": _share(len(with_calls), len(ok)),
        "calls_parse": _share(sum(all(c["parses"] for c in r.calls) for r in with_calls), len(with_calls)),
        "prompt_tokens_mean": sum(prompt) / len(prompt) if prompt else None,
        "cached_prompt_share": _share(sum(cached), sum(r.prompt_tokens for r in ok if r.cached_tokens is not None and r.prompt_tokens)),
        "finish_reasons": finish,
    }


# --- tables --------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def load_table(runs: list[dict[str, Any]]) -> str:
    """One row per (variant, level); req/s also against the variant's lowest level."""
    lowest: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["clients"]):
        lowest.setdefault(run["variant"], run)
    base_clients = sorted({lowest[v]["clients"] for v in lowest})
    scale_header = f"req/s vs {base_clients[0]} client{'s' if base_clients[0] != 1 else ''}" if len(base_clients) == 1 else "req/s vs lowest"
    header = ["variant", "clients", "requests", "errors", "req/s", "output tok/s", "TTFT p50 / p90", "TPOT p50 / p90", "e2e p50",
              "tokens/req", "with calls", "calls parse", scale_header]
    rows = []
    for run in runs:
        s = run["summary"]
        tokens = _num(s["completion_tokens_mean"], 0) + (" (chunks)" if s["tokens_counted_from_chunks"] else "")
        rows.append([run["variant"], str(run["clients"]), str(s["requests"]), str(s["errors"]), _num(s["requests_per_s"]),
                     _num(s["output_tokens_per_s"], 1), f"{fmt_time(s['ttft_p50_s'])} / {fmt_time(s['ttft_p90_s'])}",
                     f"{fmt_time(s['tpot_p50_s'])} / {fmt_time(s['tpot_p90_s'])}", fmt_time(s["e2e_p50_s"]), tokens,
                     fmt_percent(s["with_calls"]), fmt_percent(s["calls_parse"]),
                     _ratio(ratio(s["requests_per_s"], lowest[run["variant"]]["summary"]["requests_per_s"]))])
    return markdown_table(header, rows)


def ab_table(runs: list[dict[str, Any]]) -> str:
    """Default vs unconstrained at each level, with the ratio default/unconstrained (medians for latencies)."""
    by_key = {(r["variant"], r["clients"]): r["summary"] for r in runs}
    levels = sorted({c for v, c in by_key if (DEFAULT, c) in by_key and (UNCONSTRAINED, c) in by_key})
    metrics = [("req/s", "requests_per_s", _num), ("output tok/s", "output_tokens_per_s", lambda v: _num(v, 1)),
               ("TTFT p50", "ttft_p50_s", fmt_time), ("TPOT p50", "tpot_p50_s", fmt_time), ("e2e p50", "e2e_p50_s", fmt_time),
               ("tokens/req", "completion_tokens_mean", lambda v: _num(v, 0))]
    header = ["clients"] + [f"{name}: default / unconstr. (ratio)" for name, _, _ in metrics]
    rows = []
    for clients in levels:
        a, b = by_key[(DEFAULT, clients)], by_key[(UNCONSTRAINED, clients)]
        rows.append([str(clients)] + [f"{fmt(a[key])} / {fmt(b[key])} ({_ratio(ratio(a[key], b[key]))})" for _, key, fmt in metrics])
    return markdown_table(header, rows)


def error_lines(runs: list[dict[str, Any]]) -> list[str]:
    return [f"errors, {run['variant']} at {run['clients']} clients: {run['summary']['errors']} of {run['summary']['requests']}; "
            f"first: {run['summary']['first_error']}" for run in runs if run["summary"]["errors"]]


def report_text(report: dict[str, Any]) -> str:
    """The header line, the load table, the A/B table if both variants ran, and the errors."""
    a = report["args"]
    lines = [f"{report['label']}: {report['base_url']} model={report['model']}, tool_choice={a['tool_choice']}, "
             f"max_tokens={a['max_tokens']}, temperature={a['temperature']}, data={Path(a['data']).name}, "
             f"{report['wall_s']:.0f} s in all ({report['date']})", "", load_table(report["runs"])]
    if {r["variant"] for r in report["runs"]} == {DEFAULT, UNCONSTRAINED}:
        lines += ["", ab_table(report["runs"])]
    errors = error_lines(report["runs"])
    if errors:
        lines += [""] + errors
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------------------------


def requests_per_level(clients: int, requested: int | None) -> int:
    """Bounded: the given count, or max(8, 2 x clients): every client sends at least two requests, and the default
    run (8 + 8 + 32 requests) stays well under 15 minutes on 2 shared CPU cores with SmolLM2-135M."""
    return requested if requested else max(8, 2 * clients)


def plan_runs(levels: list[int], variants: list[str], requested: int | None, n_cases: int) -> list[tuple[str, int, list[int]]]:
    """(variant, clients, case indexes) in run order: per level, the variants interleaved (shared-machine noise
    hits both alike); each run takes the next slice of the cases, wrapping only if the file runs out."""
    plan, cursor = [], 0
    for clients in levels:
        for variant in variants:
            n = requests_per_level(clients, requested)
            plan.append((variant, clients, [(cursor + k) % n_cases for k in range(n)]))
            cursor += n
    return plan


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every planned run against the server; the report as written to JSON."""
    from openai import AsyncOpenAI

    cases = list(read_jsonl(Path(args.data)))
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    variants = [DEFAULT, UNCONSTRAINED] if args.ab else [UNCONSTRAINED] if args.unconstrained else [DEFAULT]
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, timeout=args.timeout, max_retries=0)
    notes: list[str] = []
    model = args.model
    if not model:
        try:
            model = (await client.models.list()).data[0].id
        except Exception as error:  # noqa: BLE001 - every request will then fail and say why
            model = "default"
            notes.append(f"listing models failed ({type(error).__name__}: {error}); sent model={model!r}")
    label = args.label or f"{model}-{args.tool_choice}" + ("-ab" if args.ab else "-unconstrained" if args.unconstrained else "")
    started, date = time.perf_counter(), datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    plan = plan_runs(levels, variants, args.requests, len(cases))
    for variant in variants:  # untimed: first-request costs stay out of the first level
        for _ in range(args.warmup):
            await send_one(client, build_request(model, cases[-1], args, variant == UNCONSTRAINED), cases[-1]["id"], time.perf_counter())
    runs = []
    for variant, clients, indexes in plan:
        requests = [(cases[i]["id"], build_request(model, cases[i], args, variant == UNCONSTRAINED)) for i in indexes]
        results, wall = await run_level(client, requests, clients)
        summary = summarize(results, wall)
        runs.append({"variant": variant, "clients": clients, "summary": summary,
                     "results": [{**asdict(r), "ttft_s": r.ttft_s, "tpot_s": r.tpot_s, "e2e_s": r.e2e_s} for r in results]})
        if not args.quiet:
            print(f"  {variant} at {clients} clients: {summary['ok']}/{summary['requests']} ok in {wall:.1f} s", file=sys.stderr)
    if sum(len(indexes) for _, _, indexes in plan) > len(cases):
        notes.append(f"more requests than the {len(cases)} cases: some prompts were sent twice (prefix caches may help them)")
    if any(run["summary"]["tokens_counted_from_chunks"] for run in runs):
        notes.append("some responses had no usage chunk: their output tokens are counted as content/tool-call chunks")
    await client.close()
    return {"label": label, "date": date, "base_url": args.base_url, "model": model, "wall_s": time.perf_counter() - started,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"},
            "notes": notes, "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--concurrency", default="1,4,16", help="client counts, one level each")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: max(8, 2 x clients))")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--tool-choice", default="required", choices=["auto", "required"],
                        help="required (default): every request makes a call, so the grammar path is loaded")
    parser.add_argument("--parallel-tool-calls", default="false", choices=["false", "true", "omit"],
                        help="false: BFCL simple expects one call; omit: do not send the field")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--unconstrained", action="store_true", help="strictcall's A/B switch: no grammar for these requests")
    variant.add_argument("--ab", action="store_true", help="strictcall: every level with and without grammars, side by side")
    parser.add_argument("--data", type=Path, default=None, metavar="PATH",
                        help="JSONL of OpenAI messages + tools (BFCL format), or a data folder (its bfcl/simple.jsonl); "
                             "default: ../shared/data/bfcl/simple.jsonl beside the repository")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests per variant before the first level")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--label", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.data is None or args.data.is_dir():  # exits with one line if the folder or its file is missing
        args.data = bfcl_file(data_dir(args.data), "simple")
    elif not args.data.is_file():
        sys.exit(f"--data {args.data}: no such file or folder; pass a BFCL-format JSONL, or a data folder holding bfcl/simple.jsonl")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(run_benchmark(args))
    print()
    print(report_text(report))
    for note in report["notes"]:
        print(f"note: {note}")
    out = Path(args.out or f".bench/serve_load-{report['label'].replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
