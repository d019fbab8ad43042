"""Tool calls on three servers, side by side in one run, same model and the same BFCL requests: strictcall's own
engine (`strictcall serve`), strictcall on vLLM (`strictcall-vllm`), and vLLM with its own xgrammar structural
tags (`--tool-call-parser hermes --tool-strict-level parameter`: every argument schema pinned, the best peer
setting).

The peer gets strictcall's prompt (`--tokenizer-mode strictcall`: SmolLM2's template knows nothing of tools, and
the hermes call syntax is what that prompt asks for), so the servers differ only in how the calls are enforced.
Each server runs alone (the cores are not shared between them), all in fp32 on the CPU.

Per server: BFCL `simple` and `multiple` (first `--limit` cases, `parallel_tool_calls: false`, temperature 0) in
`required` and `auto` mode: cases with calls, calls valid (parse, name offered, schema-valid), AST accuracy
(`bfcl_checker.py`); output tokens/s with 1, 4 and 16 concurrent streamed clients (`serve_load.py`'s closed loop,
`required`); and grammar time per output token, measured by replaying the tokens each vLLM server generated
through its own grammar in this process (ours: the turn matcher behind vLLM's grammar interface, `fill_bitmask`
+ `accept_tokens`; the peer: xgrammar's matcher of the structural tag vLLM built for the same request), cold (each
tool set seen for the first time: compile and first-visit masks included) and warm (the same requests again).

Usage (from the repository root, with both environments: scripts/install.sh test, scripts/install.sh vllm test):
  .venv-vllm/bin/python benchmarks/vllm_tools.py [--limit 50] [--concurrency 1,4,16] [--servers strictcall,strictcall-vllm,vllm-xgrammar]
      [--main-venv .venv] [--out .bench/vllm_tools.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bfcl  # noqa: E402
import serve_load  # noqa: E402
from data import bfcl_file, data_dir, read_jsonl  # noqa: E402
from report import fmt_percent, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "SmolLM2-135M-Instruct"
SERVERS = ("strictcall", "strictcall-vllm", "vllm-xgrammar")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, port: int, main_venv: Path, vllm_dtype: str = "float32") -> list[str]:
    from strictcall.server.model_loader import model_directory, resolve_model
    from strictcall.vllm.cli import build_command

    if name == "strictcall":
        return [str(main_venv / "bin" / "strictcall"), "serve", "--port", str(port), "--max-batch-size", "16"]
    vllm_flags = ["--host", "127.0.0.1", "--port", str(port), "--dtype", vllm_dtype, "--max-model-len", "4096", "--max-num-seqs", "16"]
    if name == "strictcall-vllm":
        return build_command(vllm_flags, cuda=False)[0]
    # The peer: vLLM's hermes parser with structural tags for every tool, strictcall's prompt, the same sampling defaults.
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_directory(resolve_model(None)), "--served-model-name", MODEL,
            "--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--tool-strict-level", "parameter", "--tokenizer-mode", "strictcall",
            "--override-generation-config", json.dumps({"temperature": 0.2, "top_p": 0.9}), *vllm_flags]


class Server:
    """One server in a subprocess, ready on /health, stopped on exit."""

    def __init__(self, name: str, main_venv: Path, vllm_dtype: str = "float32"):
        self.name = name
        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        self.process = subprocess.Popen(server_command(name, self.port, main_venv, vllm_dtype), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        cwd=tempfile.gettempdir())
        self.base = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Server:
        started = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{Path(self.log.name).read_text()[-4000:]}")
            try:
                if httpx.get(self.base.removesuffix("/v1") + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"{self.name} was not ready in 900 s")
            time.sleep(1)
        self.startup_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def accuracy(client: Any, root: Path, category: str, tool_choice: str, limit: int) -> dict[str, Any]:
    """bfcl.py's run for one category and mode (its request shape, checker and summary)."""
    args = argparse.Namespace(temperature=0.0, max_tokens=200, tool_choice=tool_choice, parallel_tool_calls="per-category", strictcall={},
                              unconstrained=False)
    cases = bfcl.load_cases(root, category, limit)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: bfcl.run_case(client, MODEL, r, args), cases))
    summary = bfcl.summarize(category, results)
    calls = [c for r in results if "calls" in r for c in r["calls"]]
    summary["valid"] = sum(c["parses"] and c["offered"] and c["valid"] for c in calls) / len(calls) if calls else None
    summary["cut_by_length"] = sum(r.get("finish_reason") == "length" for r in results)
    return summary


def throughput(base: str, root: Path, levels: list[int]) -> list[dict[str, Any]]:
    """Output tokens/s per concurrency level: distinct BFCL simple cases, `required`, streamed (serve_load's loop)."""
    from openai import AsyncOpenAI

    cases = list(read_jsonl(bfcl_file(root, "simple")))
    args = argparse.Namespace(max_tokens=160, temperature=0.0, tool_choice="required", parallel_tool_calls="false")
    out, offset = [], 0
    for clients in levels:
        count = serve_load.requests_per_level(clients, None)
        batch = [(c["id"], serve_load.build_request(MODEL, c, args, False)) for c in cases[offset:offset + count]]
        offset += count

        async def go(batch: list[tuple[str, dict[str, Any]]] = batch, clients: int = clients) -> dict[str, Any]:
            async with AsyncOpenAI(base_url=base, api_key="unused", timeout=900, max_retries=0) as client:
                results, wall = await serve_load.run_level(client, batch, clients)
            return serve_load.summarize(results, wall)

        out.append({"clients": clients, **asyncio.run(go())})
    return out


def token_runs(client: Any, root: Path, limit: int) -> list[tuple[dict[str, Any], list[int]]]:
    """(request, generated token ids) of `required` simple cases on a vLLM server, for the grammar replay."""
    runs = []
    for case in bfcl.load_cases(root, "simple", limit):
        request = {"messages": case["messages"], "tools": case["tools"], "tool_choice": "required", "parallel_tool_calls": False,
                   "max_tokens": 160, "temperature": 0.0}
        response = client.chat.completions.create(model=MODEL, extra_body={"return_token_ids": True}, **request)
        runs.append((request, list(response.choices[0].model_extra.get("token_ids") or [])))
    return runs


def _replay(runs: list[tuple[dict[str, Any], list[int]]], compile_turn: Any, fill: Any, accept: Any, done: Any) -> tuple[float, float]:
    """Seconds per token over the runs, twice: cold (the first time each tool set is seen: compile and first-visit
    masks included) and warm (the same requests again, caches kept)."""
    rates = []
    for _ in range(2):
        spent, tokens = 0.0, 0
        for request, ids in runs:
            started = time.perf_counter()
            grammar = compile_turn(request)
            for token in ids:
                fill(grammar)
                if not accept(grammar, token) or done(grammar):
                    break
            spent += time.perf_counter() - started
            tokens += len(ids)
        rates.append(spent / tokens if tokens else float("nan"))
    return rates[0], rates[1]


def grammar_time_ours(runs: list[tuple[dict[str, Any], list[int]]]) -> tuple[float, float]:
    """strictcall's grammar as vLLM drives it: the spec compiled (cached per tool set), `fill_bitmask`, `accept_tokens`."""
    import torch
    from transformers import AutoTokenizer

    from strictcall.server.model_loader import model_directory, resolve_model
    from strictcall.vllm.grammar import TurnCompiler
    from strictcall.vllm.turn_spec import turn_spec_from_request

    tokenizer = AutoTokenizer.from_pretrained(model_directory(resolve_model(None)))
    turns = TurnCompiler(tokenizer, 49152, disk_cache=False)
    bitmask = torch.full((1, 49152 // 32), -1, dtype=torch.int32)

    def compile_turn(request: dict[str, Any]) -> Any:
        spec = turn_spec_from_request(request, "generic")
        assert spec is not None
        return turns.compile(spec.to_json(), {2})

    return _replay(runs, compile_turn, lambda g: g.fill_bitmask(bitmask, 0), lambda g, t: g.accept_tokens("bench", [t]), lambda g: g.is_terminated())


def grammar_time_xgrammar(runs: list[tuple[dict[str, Any], list[int]]]) -> tuple[float, float]:
    """The peer's grammar: the structural tag vLLM's hermes parser builds, compiled (cached) and matched by xgrammar."""
    import xgrammar as xgr
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevel

    from strictcall.server.model_loader import model_directory, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(model_directory(resolve_model(None)))
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=49152), max_threads=2, cache_enabled=True)
    bitmask = xgr.allocate_token_bitmask(1, 49152)
    parser = Hermes2ProToolParser(tokenizer)

    def compile_turn(request: dict[str, Any]) -> Any:
        tag = parser.get_structural_tag(ChatCompletionRequest(model=MODEL, **request), strict_level=ToolStrictLevel.PARAMETER)
        return xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag.model_dump())), override_stop_tokens=[2])

    return _replay(runs, compile_turn, lambda m: m.fill_next_token_bitmask(bitmask, 0), lambda m, t: m.accept_token(t), lambda m: m.is_terminated())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from openai import OpenAI

    root = data_dir(args.data)
    levels = [int(x) for x in args.concurrency.split(",")]
    report: dict[str, Any] = {"load": os.getloadavg(), "limit": args.limit, "servers": {}}
    for name in args.servers.split(","):
        print(f"[bench] {name}: starting", flush=True)
        with Server(name, Path(args.main_venv)) as server:
            client = OpenAI(base_url=server.base, api_key="unused", timeout=900, max_retries=0)
            entry: dict[str, Any] = {"startup_s": server.startup_s, "accuracy": {}}
            for mode in ("required", "auto"):
                for category in ("simple", "multiple"):
                    print(f"[bench] {name}: BFCL {category} {mode}", flush=True)
                    entry["accuracy"][f"{category}/{mode}"] = accuracy(client, root, category, mode, args.limit)
            print(f"[bench] {name}: load {levels}", flush=True)
            entry["throughput"] = throughput(server.base, root, levels)
            if name != "strictcall":
                entry["token_runs"] = token_runs(client, root, args.replay)
        report["servers"][name] = entry
    for name, entry in report["servers"].items():
        if "token_runs" in entry:
            entry["grammar_s_per_token"] = (grammar_time_ours if name == "strictcall-vllm" else grammar_time_xgrammar)(entry.pop("token_runs"))
    report["load_after"] = os.getloadavg()
    return report


def table(report: dict[str, Any]) -> str:
    header = ["server", "category / tool_choice", "with calls", "calls valid", "AST", "cut by length"]
    rows = []
    for name, entry in report["servers"].items():
        for key, s in entry["accuracy"].items():
            rows.append([name, key, fmt_percent(s["with_calls"]), fmt_percent(s["valid"]), fmt_percent(s["ast_accuracy"]), str(s["cut_by_length"])])
    levels = [t["clients"] for t in next(iter(report["servers"].values()))["throughput"]]
    speed_header = ["server", *[f"tok/s, {c} clients" for c in levels], f"calls parse ({levels[-1]} clients)",
                    "grammar per token, cold / warm", "start-up"]
    speed = []
    for name, entry in report["servers"].items():
        per_token = entry.get("grammar_s_per_token")
        speed.append([name, *[f"{t['output_tokens_per_s']:.1f}" for t in entry["throughput"]], fmt_percent(entry["throughput"][-1]["calls_parse"]),
                      "-" if per_token is None else f"{per_token[0] * 1e6:.0f} / {per_token[1] * 1e6:.0f} µs", f"{entry['startup_s']:.0f} s"])
    load = ", ".join(f"{x:.2f}" for x in report["load"])
    return (markdown_table(header, rows) + "\n\n" + markdown_table(speed_header, speed)
            + f"\n\nBFCL first {report['limit']} cases per category; load average before: {load}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--limit", type=int, default=50, help="BFCL cases per category and mode")
    parser.add_argument("--replay", type=int, default=20, help="cases replayed for the grammar time per token")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--main-venv", default=str(ROOT / ".venv"), help="the environment with `strictcall serve`")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(ROOT / ".bench" / "vllm_tools.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run(args)
    report["wall_s"] = time.perf_counter() - started
    text = table(report)
    print("\n" + text + f"\n{report['wall_s']:.0f} s in all")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}; median output tokens: " + ", ".join(
        f"{n} {statistics.median([t['completion_tokens_mean'] or 0 for t in e['throughput']]):.0f}" for n, e in report["servers"].items()))


if __name__ == "__main__":
    main()
