"""Head-of-line blocking: how long a short request waits for its first token while a long prompt prefills.

SmolLM2-135M-Instruct on this CPU, strictcall's engine. A ~3,900-token prompt is submitted, and a short one
(~30 tokens) `--delay` seconds later. Side by side in one run: the engine's fair prefill (each step's budget,
`--prefill-chunk-tokens` 256, shared among the prompts being prefilled) against a budget large enough to
prefill the long prompt in one step (what a server that prefills one prompt at a time does), and the short
request alone. Medians over `--rounds`.

Usage: .venv/bin/python benchmarks/prefill_fairness.py [--rounds 3] [--delay 1.0] [--long-tokens 3900]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `strictcall serve` sets it
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table  # noqa: E402

from strictcall.kernels import SamplingParams  # noqa: E402
from strictcall.server.engine import Engine, EngineConfig  # noqa: E402
from strictcall.server.model_loader import load_model, resolve_model  # noqa: E402
from strictcall.server.model_runner import ModelRunner  # noqa: E402
from strictcall.server.sequence import EngineEvent, EngineRequest  # noqa: E402


def first_tokens(engine: Engine, requests: list[tuple[float, EngineRequest]]) -> dict[str, float]:
    """Submit each request at its delay (seconds from now); the time from its submission to its first token."""
    firsts: dict[str, float] = {}
    submitted: dict[str, float] = {}
    done = threading.Event()
    pending = {r.request_id for _, r in requests}

    def sink(event: EngineEvent) -> None:
        if event.token_ids and event.request_id not in firsts:
            firsts[event.request_id] = time.perf_counter() - submitted[event.request_id]
        if event.finish_reason is not None:
            pending.discard(event.request_id)
            if not pending:
                done.set()

    start = time.perf_counter()
    for delay, request in sorted(requests, key=lambda item: item[0]):
        time.sleep(max(0.0, start + delay - time.perf_counter()))
        submitted[request.request_id] = time.perf_counter()
        engine.submit(request, sink)
    done.wait(600)
    return firsts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--long-tokens", type=int, default=3900)
    parser.add_argument("--prefill-chunk-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(resolve_model(None), torch.device("cpu"), torch.float32)
    from strictcall.grammars import Vocabulary

    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    story = tokenizer.encode("Once upon a time there was a cat who liked long walks. " * 400, add_special_tokens=False)[: args.long_tokens]
    short = tokenizer.encode("What is the capital of France? Answer in one word.", add_special_tokens=False)
    greedy = SamplingParams(temperature=0.0)
    setups = {"fair (256 shared)": args.prefill_chunk_tokens, "one prompt at a time": args.long_tokens + 64}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in [*setups, "short alone"]}
    for round_ in range(args.rounds):
        for name, budget in setups.items():
            engine = Engine(ModelRunner(model, 4, 4096), vocabulary, tokenizer, EngineConfig(prefill_chunk_tokens=budget))
            engine.start()
            try:
                results[name].append(first_tokens(engine, [
                    (0.0, EngineRequest(f"long{round_}", story, greedy, max_tokens=4)),
                    (args.delay, EngineRequest(f"short{round_}", short, greedy, max_tokens=4)),
                ]))
            finally:
                engine.shutdown()
        engine = Engine(ModelRunner(model, 4, 4096), vocabulary, tokenizer, EngineConfig(prefill_chunk_tokens=args.prefill_chunk_tokens))
        engine.start()
        try:
            results["short alone"].append(first_tokens(engine, [(0.0, EngineRequest(f"short{round_}", short, greedy, max_tokens=4))]))
        finally:
            engine.shutdown()

    def median(name: str, prefix: str) -> float | None:
        values = [v for r in results[name] for k, v in r.items() if k.startswith(prefix)]
        return statistics.median(values) if values else None

    alone = median("short alone", "short")
    rows = []
    for name in results:
        short_ttft, long_ttft = median(name, "short"), median(name, "long")
        rows.append([name, f"{short_ttft:.2f} s" if short_ttft else "-", f"{short_ttft / alone:.1f}x" if short_ttft and alone else "-",
                     f"{long_ttft:.2f} s" if long_ttft else "-"])
    print(f"## Prefill fairness: a {len(story)}-token prompt, then a {len(short)}-token one {args.delay:g} s later "
          f"(median of {args.rounds}, torch threads {torch.get_num_threads()})\n")
    print(markdown_table(["setup", "short request: time to first token", "vs alone", "long request: time to first token"], rows))


if __name__ == "__main__":
    main()
