"""The engine's torch thread pool on CPU: idle OpenMP workers must not busy-wait.

What was seen: decoding SmolLM2 on 2 shared cores went from ~40-80 to ~380 ms/token. It was blamed on the
loading thread exiting, and `create_app` kept that thread parked until shutdown. The cause is libgomp (torch's
OpenMP runtime): after each parallel region an idle worker spins up to GOMP_SPINCOUNT=300000 times (~4 ms)
before it sleeps, except when more OpenMP threads exist than CPUs. The engine thread does Python work between
torch ops (masks, sampling, scheduling) while its worker spins on the other core, which is slow as soon as
other processes need the cores. Whether the loading thread was alive only mattered when that thread had run a
parallel region itself: its idle team then pushed the thread count over the CPU count, and libgomp spun only
1000 times. The current loader runs no parallel region, so parking it made no difference (measured).

The fix has to be in place before torch (and so libgomp) is imported, so it belongs in `strictcall serve`
(server/cli.py): set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy. The
check runs in a fresh interpreter that goes through `strictcall serve`'s start-up, with `uvicorn.run`
replaced by the probe. That way the probe sees the environment the server would have set.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from strictcall.server.api import create_app
from strictcall.server.config import ServerConfig

# Runs where the server would serve: `strictcall serve` up to `uvicorn.run`, which the probe replaces.
# A tiny random Llama decodes on a thread started by a "loading" thread that has exited (the server's
# layout). It sleeps 5 ms between steps (the engine's Python work), and the probe measures the CPU time
# that all other threads, the OpenMP workers among them, burn meanwhile.
PROBE = r"""
import json, os, sys, threading, time
import uvicorn

def cpu_ms(tids):
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e6

def probe(app, **kwargs):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from strictcall.server.model_runner import ModelRunner

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    runner = ModelRunner(LlamaForCausalLM(config).eval(), 1, 256)
    result = {"threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}

    def decode():
        me = threading.get_native_id()
        for position in range(5):
            runner.forward([0], [[1]], [position])
        time.sleep(0.2)
        others = [int(t) for t in os.listdir("/proc/self/task") if int(t) not in (me, threading.main_thread().native_id)]
        before, started, idle = cpu_ms(others), time.perf_counter(), 0.0
        for position in range(5, 45):
            runner.forward([0], [[1]], [position])
            t = time.perf_counter()
            time.sleep(0.005)
            idle += time.perf_counter() - t
        result.update(wall_s=time.perf_counter() - started, idle_s=idle, others_cpu_s=(cpu_ms(others) - before) / 1e3)

    def load():
        runner.forward([0], [[1]], [0])
        thread = threading.Thread(target=decode, name="strictcall-engine")
        thread.start()
        result["engine"] = thread

    loader = threading.Thread(target=load, name="strictcall-load")
    loader.start()
    loader.join()  # the loading thread has exited; the engine thread it started decodes
    result.pop("engine").join()
    print("PROBE " + json.dumps(result), flush=True)

uvicorn.run = probe
from strictcall.server import cli
sys.exit(cli.main(["serve", "--log-level", "warning"]))
"""


def test_idle_openmp_workers_do_not_spin_in_the_server() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("PROBE "))
    if result["threads"] < 2:
        pytest.skip("torch runs one thread here: there is no OpenMP worker to spin")
    # Measured on 2 cores: spinning workers burn 100-110% of the idle time, sleeping ones about 1%.
    assert result["others_cpu_s"] < 0.3 * result["idle_s"], result


def test_the_loading_thread_ends_once_the_model_is_loaded() -> None:
    """No thread is parked until shutdown any more (it was a workaround for the spinning above)."""
    serving = types.SimpleNamespace(shutdown=lambda: None)
    app = create_app(ServerConfig(served_model_names=("tiny",)), loader=lambda config: serving)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 10
            while app.state.app_state.serving is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert app.state.app_state.serving is serving
            for thread in [t for t in threading.enumerate() if t.name == "strictcall-load"]:
                thread.join(timeout=5)
                assert not thread.is_alive()

    asyncio.run(run())
