"""Soak: many clients for many minutes, every mode, random disconnects and a share of bad requests; strictcall must
stay healthy, bounded in memory, and return only valid calls.

`clients` clients (default 16) each send requests back to back for `--minutes` (default 10). Each request is a
BFCL case (messages + tools) in a random mix: `tool_choice` required / auto / named / none, `parallel_tool_calls`
on or off, streamed or not, plain chat without tools, and `response_format` json_schema; a share
(`--bad-share`, default 10%) are bad requests (malformed JSON, wrong types, unenforceable strict schemas, lone
surrogates, too many tokens), which must get a 4xx in OpenAI's error shape; a share (`--disconnect-share`,
default 10%) of streamed requests are dropped by the client after a few chunks. Every returned call must name an
offered tool and validate against its schema (non-strict keywords the server reports in
`x-strictcall-unenforced` excepted).

Counted: requests by outcome (ok, 4xx by code, 5xx, transport errors, disconnects), calls and invalid calls,
the server's RSS every 10 s (the server is started by this script, so its pid is known; with `--base-url`, RSS
is not sampled), and the server's gauges at the end (running, waiting, grammar cache bytes).

Usage: .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 16] [--data DIR] [--out .bench/soak.json]
       [--base-url URL]   (default: start `strictcall serve` on a free port and stop it at the end)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import add_data_argument, bfcl_file, data_dir, read_jsonl  # noqa: E402
from report import markdown_table  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
BAD_BODIES: list[bytes | dict[str, Any]] = [
    b"{not json",
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": True},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": "2"},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {"type": "object", "properties": {"x": {"not": {"type": "string"}}}}}}]},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": ["x"]}}}]},
    b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "a\\ud800"}]}',
    {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def build(case: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A random request mode for a case: (mode name, body)."""
    body: dict[str, Any] = {"model": MODEL, "messages": case["messages"], "max_tokens": 96, "temperature": rng.choice([0.0, 0.7])}
    mode = rng.choice(["required", "auto", "named", "none", "plain", "response_format"])
    if mode in ("required", "auto", "named", "none"):
        body["tools"] = case["tools"]
        name = rng.choice(case["tools"])["function"]["name"]
        body["tool_choice"] = {"type": "function", "function": {"name": name}} if mode == "named" else mode
        body["parallel_tool_calls"] = rng.random() < 0.5
    elif mode == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
            "type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"], "additionalProperties": False}}}
    return mode, body


def invalid_calls(message: dict[str, Any], body: dict[str, Any], unenforced: str | None) -> tuple[int, int]:
    """(calls, invalid calls) of one answer: a call must name an offered tool and validate (unless the server said
    a keyword of its schema is not enforced)."""
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in body.get("tools") or []}
    calls = message.get("tool_calls") or []
    bad = 0
    for call in calls:
        name = call["function"]["name"]
        try:
            arguments = json.loads(call["function"]["arguments"])
            if name not in schemas:
                raise ValueError(f"unknown tool {name}")
            if not unenforced:
                jsonschema.validate(arguments, schemas[name])
        except (ValueError, jsonschema.ValidationError):
            bad += 1
    return len(calls), bad


async def one_request(client: httpx.AsyncClient, case: dict[str, Any], rng: random.Random, args: argparse.Namespace, counts: Counter) -> None:
    if rng.random() < args.bad_share:
        bad = rng.choice(BAD_BODIES)
        kwargs: dict[str, Any] = {"content": bad, "headers": {"content-type": "application/json"}} if isinstance(bad, bytes) else {"json": bad}
        response = await client.post("/chat/completions", **kwargs)
        shaped = set(response.json().get("error", {})) == {"message", "type", "param", "code"} if response.status_code >= 400 else False
        counts[f"bad input -> {response.status_code}{'' if shaped else ' (not OpenAI-shaped)'}"] += 1
        return
    mode, body = build(case, rng)
    stream = rng.random() < 0.5
    if stream:
        body["stream"] = True
        drop = rng.random() < args.disconnect_share
        async with client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                counts[f"{mode}: HTTP {response.status_code}"] += 1
                return
            calls: dict[int, dict[str, Any]] = {}
            chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunks += 1
                if drop and chunks >= 3:
                    counts["disconnected mid-stream (on purpose)"] += 1
                    return
                data = json.loads(line[6:])
                if "error" in data:
                    counts[f"{mode}: stream error event"] += 1
                    return
                for choice in data.get("choices", []):
                    for piece in choice["delta"].get("tool_calls") or []:
                        entry = calls.setdefault(piece["index"], {"function": {"name": "", "arguments": ""}})
                        entry["function"]["name"] += piece.get("function", {}).get("name") or ""
                        entry["function"]["arguments"] += piece.get("function", {}).get("arguments") or ""
                    if choice.get("finish_reason") == "length":
                        calls.clear()  # a streamed call cut by the budget is not a call
            message = {"tool_calls": list(calls.values())}
            unenforced = response.headers.get("x-strictcall-unenforced")
    else:
        response = await client.post("/chat/completions", json=body)
        if response.status_code != 200:
            counts[f"{mode}: HTTP {response.status_code}"] += 1
            return
        message = response.json()["choices"][0]["message"]
        unenforced = response.headers.get("x-strictcall-unenforced")
    num_calls, num_bad = invalid_calls(message, body, unenforced)
    counts["ok"] += 1
    counts["calls"] += num_calls
    counts["invalid calls"] += num_bad


async def soak(args: argparse.Namespace, base_url: str, pid: int | None) -> dict[str, Any]:
    cases = [c for c in read_jsonl(bfcl_file(data_dir(args.data), "simple")) if c["tools"]]
    counts: Counter = Counter()
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60

    async def client_loop(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
            while time.monotonic() < deadline:
                try:
                    await one_request(client, rng.choice(cases), rng, args, counts)
                except httpx.HTTPError as error:
                    counts[f"transport error: {type(error).__name__}"] += 1

    async def sample_rss() -> None:
        while time.monotonic() < deadline:
            if pid is not None and (value := rss_mb(pid)) is not None:
                rss.append((time.monotonic() - started, value))
            await asyncio.sleep(10)

    await asyncio.gather(sample_rss(), *(client_loop(i) for i in range(args.clients)))
    async with httpx.AsyncClient(timeout=30) as client:
        metrics_text = (await client.get(base_url.removesuffix("/v1") + "/metrics")).text
        healthy = (await client.get(base_url.removesuffix("/v1") + "/health")).status_code == 200
    gauges = {line.split()[0]: float(line.split()[1]) for line in metrics_text.splitlines()
              if line.startswith(("strictcall_num_requests_running ", "strictcall_num_requests_waiting ", "strictcall_grammar_cache_bytes ",
                                  "strictcall_engine_row_errors_total "))}
    return {"minutes": args.minutes, "clients": args.clients, "counts": dict(counts), "rss_mb": rss, "gauges": gauges, "healthy": healthy}


def report_text(result: dict[str, Any]) -> str:
    counts = result["counts"]
    rows = [[name, str(value)] for name, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines = [f"## Soak: {result['clients']} clients, {result['minutes']:g} min", "", markdown_table(["outcome", "count"], rows), ""]
    rss = [value for _, value in result["rss_mb"]]
    if rss:
        quarter = max(1, len(rss) // 4)
        lines.append(f"Server RSS: start {rss[0]:.0f} MB, first quarter max {max(rss[:quarter]):.0f} MB, last quarter max "
                     f"{max(rss[-quarter:]):.0f} MB, overall max {max(rss):.0f} MB ({len(rss)} samples, every 10 s)")
    lines.append(f"Gauges at the end: {result['gauges']}; healthy: {result['healthy']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--disconnect-share", type=float, default=0.1)
    parser.add_argument("--base-url", help="a running server (default: start one)")
    parser.add_argument("--out", default=".bench/soak.json")
    add_data_argument(parser)
    args = parser.parse_args(argv)
    server = None
    base_url = args.base_url
    if base_url is None:
        port = free_port()
        log = tempfile.NamedTemporaryFile("w+", prefix="soak-serve-", suffix=".log", delete=False)
        strictcall = Path(sys.executable).parent / "strictcall"
        server = subprocess.Popen([str(strictcall), "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}/v1"
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"server log: {log.name}")
    try:
        result = asyncio.run(soak(args, base_url, server.pid if server else None))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    text = report_text(result)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
