"""benchmarks/serve_load.py: its statistics on hand-made timings, its tables, its plan, tool-call accumulation,
errors as results (a dead port), and one small end-to-end run (with `--ab`) against a real HTTP server in
this process: uvicorn on a free port, the app on a tiny random-weight Llama over SmolLM2's vocabulary.
"""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = serve_load  # dataclasses look their module up there
_spec.loader.exec_module(serve_load)  # type: ignore[union-attr]
RequestResult = serve_load.RequestResult


def _result(start: float, first: float | None, end: float, tokens: int | None, *, calls=(), error=None, tokens_from="usage") -> RequestResult:
    return RequestResult("c", start, end, first, tokens, tokens_from, calls=list(calls), error=error)


def _call(arguments: str) -> dict:
    return {"name": "f", "arguments": arguments, "parses": serve_load.parses(arguments)}


# ----- one request's numbers -----


def test_ttft_tpot_and_e2e_of_one_request() -> None:
    r = _result(1.0, 1.5, 3.5, 5)
    assert r.ttft_s == pytest.approx(0.5) and r.e2e_s == pytest.approx(2.5)
    assert r.tpot_s == pytest.approx(2.0 / 4)  # 4 tokens after the first, in 2 s
    assert _result(0.0, 0.2, 0.3, 1).tpot_s is None  # one token: no time per token after it
    assert _result(0.0, None, 0.3, 0).ttft_s is None and _result(0.0, None, 0.3, 3).tpot_s is None


def test_summary_of_hand_made_timings() -> None:
    results = [
        _result(0.0, 0.1, 1.1, 11, calls=[_call('{"a": 1}')]),                     # tpot 0.1
        _result(0.0, 0.2, 2.2, 11, calls=[_call('{"a": 1}'), _call('{"a": ')]),    # tpot 0.2, a call cut short
        _result(1.1, 1.4, 4.4, 11, calls=[_call("{}")], tokens_from="chunks"),    # tpot 0.3
        _result(2.2, 2.6, 6.6, 11),                                                # tpot 0.4, text only
        _result(3.0, None, 3.5, None, error="APIConnectionError: Connection error."),
    ]
    s = serve_load.summarize(results, wall_s=8.0)
    assert (s["requests"], s["ok"], s["errors"]) == (5, 4, 1)
    assert s["first_error"] == "APIConnectionError: Connection error."
    assert s["requests_per_s"] == pytest.approx(4 / 8) and s["output_tokens_per_s"] == pytest.approx(44 / 8)
    assert s["ttft_p50_s"] == pytest.approx(0.3) and s["ttft_p90_s"] == pytest.approx(0.4)  # ttfts 0.1, 0.2, 0.3, 0.4
    assert s["tpot_p50_s"] == pytest.approx(0.3) and s["tpot_p90_s"] == pytest.approx(0.4)  # tpots 0.1, 0.2, 0.3, 0.4
    assert s["e2e_p50_s"] == pytest.approx(3.3) and s["e2e_p90_s"] == pytest.approx(4.4)  # nearest rank, as _common
    assert s["with_calls"] == pytest.approx(3 / 4) and s["calls_parse"] == pytest.approx(2 / 3)
    assert s["tokens_counted_from_chunks"] == 1 and s["completion_tokens_mean"] == pytest.approx(11)


def test_summary_of_a_level_where_everything_failed() -> None:
    s = serve_load.summarize([_result(0.0, None, 0.1, 0, error="boom")], wall_s=0.1)
    assert s["ok"] == 0 and s["requests_per_s"] == 0 and s["ttft_p50_s"] is None and s["with_calls"] is None
    assert s["calls_parse"] is None and s["completion_tokens_mean"] is None


def test_tool_call_pieces_add_up_per_index() -> None:
    def piece(index, arguments, name=None, id=None):
        return SimpleNamespace(index=index, id=id, function=SimpleNamespace(name=name, arguments=arguments))

    calls: dict = {}
    for p in [piece(0, "", "get_weather", "call_1"), piece(0, '{"city": '), piece(1, '{"zone"', "get_time", "call_2"),
              piece(0, '"Paris"}'), piece(1, ': "UTC"}')]:
        serve_load._add_tool_call_delta(calls, p)
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Paris"}'}, 1: {"name": "get_time", "arguments": '{"zone": "UTC"}'}}
    loose: dict = {}  # a server that leaves `index` out: an id starts a call, pieces without one continue it
    for p in [piece(None, "{", "f", "a"), piece(None, "}"), piece(None, "[]", "g", "b")]:
        serve_load._add_tool_call_delta(loose, p)
    assert [c["arguments"] for c in loose.values()] == ["{}", "[]"]


# ----- plan and tables -----


def test_plan_gives_every_run_its_own_cases_and_interleaves_variants() -> None:
    assert serve_load.requests_per_level(1, None) == 8 and serve_load.requests_per_level(16, None) == 32
    assert serve_load.requests_per_level(16, 5) == 5
    plan = serve_load.plan_runs([1, 4], ["default", "unconstrained"], 3, n_cases=10)
    assert [(v, c) for v, c, _ in plan] == [("default", 1), ("unconstrained", 1), ("default", 4), ("unconstrained", 4)]
    indexes = [i for _, _, idx in plan for i in idx]
    assert indexes == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # distinct until the file runs out, then wrapped


def _run(variant: str, clients: int, rps: float, tokens_s: float, **extra) -> dict:
    summary = {"requests": 16, "ok": 16, "errors": 0, "first_error": None, "requests_per_s": rps, "output_tokens_per_s": tokens_s,
               "ttft_p50_s": 0.25, "ttft_p90_s": 1.5, "tpot_p50_s": 0.04, "tpot_p90_s": 0.08, "e2e_p50_s": 2.0,
               "completion_tokens_mean": 40.0, "tokens_counted_from_chunks": 0, "with_calls": 1.0, "calls_parse": 1.0}
    summary.update(extra)
    return {"variant": variant, "clients": clients, "summary": summary}


def test_load_table_rows_units_and_scaling_against_one_client() -> None:
    runs = [_run("default", 1, 0.5, 20.0), _run("default", 4, 1.25, 50.0, errors=2, first_error="InternalServerError: x",
                                                  calls_parse=0.5, tokens_counted_from_chunks=3, ttft_p50_s=None)]
    lines = serve_load.load_table(runs).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| variant | clients |") and lines[0].endswith("| req/s vs 1 client |")
    assert lines[2] == ("| default | 1 | 16 | 0 | 0.50 | 20.0 | 250 ms / 1.5 s | 40 ms / 80 ms | 2 s | 40 | 100% | 100% | 1.00x |")
    assert lines[3] == ("| default | 4 | 16 | 2 | 1.25 | 50.0 | - / 1.5 s | 40 ms / 80 ms | 2 s | 40 (chunks) | 100% | 50% | 2.50x |")
    assert serve_load.error_lines(runs) == ["errors, default at 4 clients: 2 of 16; first: InternalServerError: x"]


def test_ab_table_pairs_levels_and_divides_default_by_unconstrained() -> None:
    runs = [_run("default", 1, 0.5, 20.0), _run("unconstrained", 1, 0.25, 40.0, tpot_p50_s=0.05),
            _run("default", 4, 1.0, 30.0), _run("unconstrained", 4, 0.0, 0.0)]
    lines = serve_load.ab_table(runs).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| clients | req/s: default / unconstr. (ratio) |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:5] == ["1", "0.50 / 0.25 (2.00x)", "20.0 / 40.0 (0.50x)", "250 ms / 250 ms (1.00x)", "40 ms / 50 ms (0.80x)"]
    assert "1.00 / 0.00 (-)" in lines[3]  # no ratio against zero


# ----- runs against servers -----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_server_gives_error_results_not_a_crash(tmp_path, capsys) -> None:
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": "hi"}], "tools": []}) + "\n" for i in range(3)))
    out = tmp_path / "dead.json"
    serve_load.main(["--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--concurrency", "1,2", "--requests", "2",
                     "--data", str(data), "--out", str(out), "--quiet", "--timeout", "5"])
    report = json.loads(out.read_text())
    assert [r["summary"]["errors"] for r in report["runs"]] == [2, 2]
    assert "Connection" in report["runs"][0]["summary"]["first_error"]
    assert any("listing models failed" in n for n in report["notes"])
    printed = capsys.readouterr().out
    assert "errors, default at 2 clients: 2 of 2" in printed


# Closed enum-only schemas: the grammar forces a whole call, so even random weights end it within max_tokens.
ENUM_TOOLS = [
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
                                                     "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_unit", "parameters": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}},
                                                                         "required": ["unit"], "additionalProperties": False}}},
]


@pytest.fixture(scope="module")
def tiny_server(build_serving, tiny_llama):
    """A real HTTP server (uvicorn in a thread) for the app on a tiny random-weight Llama: the grammar does all the work."""
    import torch
    import uvicorn

    from strictcall.server.api import create_app
    from strictcall.server.config import ServerConfig

    # One torch thread: this model is tiny, and on a CPU shared with other jobs two OpenMP threads wait on each
    # other (measured here: a 2-row forward took 250 ms with 2 threads, 1 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    serving = build_serving(tiny_llama)
    app = create_app(ServerConfig(served_model_names=("tiny",), max_model_len=1024), loader=lambda c: serving)  # lifespan stops the engine
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the in-process server was not ready in 60 s"
        time.sleep(0.05)
    yield base + "/v1"
    server.should_exit = True
    thread.join(timeout=30)
    torch.set_num_threads(threads)


def test_end_to_end_ab_run_against_a_real_http_server(tiny_server, tmp_path, capsys) -> None:
    data = tmp_path / "cases.jsonl"
    questions = ["What time is it in Paris?", "Which unit do they use in the US?", "Time in London?", "Unit in France?"]
    data.write_text("".join(json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": q}], "tools": ENUM_TOOLS}) + "\n"
                            for i, q in enumerate(questions)))
    out = tmp_path / "tiny.json"
    serve_load.main(["--base-url", tiny_server, "--concurrency", "1,2", "--requests", "2", "--max-tokens", "64", "--ab", "--warmup", "0",
                     "--data", str(data), "--out", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["label"] == "tiny-required-ab"
    assert [(r["variant"], r["clients"]) for r in report["runs"]] == [("default", 1), ("unconstrained", 1), ("default", 2), ("unconstrained", 2)]
    for run in report["runs"]:
        s = run["summary"]
        assert s["errors"] == 0 and s["ok"] == 2, s["first_error"]
        assert s["tokens_counted_from_chunks"] == 0 and s["completion_tokens"] > 0  # the server sends a usage chunk
        assert s["requests_per_s"] > 0 and s["output_tokens_per_s"] > 0
        for r in run["results"]:
            assert 0 <= r["start_s"] < r["first_token_s"] <= r["end_s"] and r["ttft_s"] <= r["e2e_s"]
            assert r["completion_tokens"] <= 64
        if run["variant"] == "default":  # the grammar forces one complete call to an offered tool
            assert s["with_calls"] == 1.0 and s["calls_parse"] == 1.0, run["results"]
            assert all(len(r["calls"]) == 1 and r["calls"][0]["name"] in ("get_time", "get_unit") for r in run["results"])
        else:  # random weights without a grammar write no call syntax
            assert s["with_calls"] == 0.0
    # two requests per run, four runs, four cases: the second level wraps around, and the report says so
    assert any("sent twice" in n for n in report["notes"])
    printed = capsys.readouterr().out
    assert "| default | 2 | 2 | 0 |" in printed and "| 2 | " in printed.split("req/s: default / unconstr.")[1]
    assert not math.isnan(report["wall_s"])
