"""End-to-end generation throughput on SmolLM2 on this CPU, side by side in one run.

(a) Hugging Face `generate`, one request at a time (what a naive server does);
(b) our engine, unconstrained;  (c) our engine with tool grammars;  (d) (c) + jump-forward.
Aggregate tokens/s at 1, 4 and 16 concurrent requests (closed loop: each client sends its next request when
the last one finishes), and model forward passes per tool call with and without jump-forward.

The prompts are BFCL questions with their tools described in the system message (the `generic` format, as the
server does for SmolLM2); (c) and (d) force exactly one call (`tool_choice: required`, no parallel calls).

On 2 CPU cores the default prompts (~285 tokens: the tools description) make the run prefill-bound: 16 prompts
are 4,560 prompt tokens for ~1,500 output tokens, and a 135M model computes ~330 tokens/s in total here.
`--short-prompts` gives the decode-bound picture.

Usage: .venv/bin/python benchmarks/engine.py [--requests 16] [--max-tokens 96] [--concurrency 1,4,16] [--short-prompts]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.formats import GENERIC
from strictcall.grammars.tools import ToolGrammarCompiler
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.kernels import SamplingParams
from strictcall.server.engine import Engine, EngineConfig, EngineRequest
from strictcall.server.model_runner import ModelRunner, RunnerConfig, load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bfcl" / "simple.jsonl"
GREEDY = SamplingParams(temperature=0.0)


def bfcl_cases(count: int) -> list[dict]:
    with open(DATA) as f:
        return [json.loads(line) for line in f][:count]


def render_prompt(tokenizer, case: dict, with_tools: bool = True) -> list[int]:
    system = [{"role": "system", "content": GENERIC.render_tools_prompt(case["tools"])}] if with_tools else []
    messages = system + case["messages"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return ids if isinstance(ids, list) else ids["input_ids"]


def count_calls(text: str) -> int:
    """Complete calls in a turn (a turn cut by max_tokens has none that count)."""
    try:
        return len(GENERIC.parse_tool_calls(text)[1])
    except ValueError:
        return 0


def hf_one_at_a_time(model, prompts: list[list[int]], max_tokens: int, eos: list[int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos[0])
            tokens += out.shape[1] - x.shape[1]
    return time.perf_counter() - start, tokens


def run_engine(engine: Engine, requests: list[EngineRequest], concurrency: int) -> tuple[float, int, list[str]]:
    """Closed loop with `concurrency` clients; returns (seconds, output tokens, texts)."""
    texts: dict[str, str] = {}

    async def client(queue: asyncio.Queue) -> int:
        tokens = 0
        while not queue.empty():
            request = queue.get_nowait()
            parts = []
            async for event in engine.generate(request):
                parts.append(event.text)
                if event.finish_reason:
                    tokens += event.num_output_tokens
            texts[request.request_id] = "".join(parts)
        return tokens

    async def main() -> int:
        queue: asyncio.Queue = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        return sum(await asyncio.gather(*(client(queue) for _ in range(concurrency))))

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return time.perf_counter() - start, tokens, [texts[r.request_id] for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--short-prompts", action="store_true",
                        help="the user question only (~40 tokens, no tools description): decode-bound instead of prefill-bound")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    model, tokenizer = load_model(RunnerConfig(dtype=args.dtype))
    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    eos = list(vocabulary.eos_token_ids)
    cases = bfcl_cases(args.requests)
    prompts = [render_prompt(tokenizer, c, with_tools=not args.short_prompts) for c in cases]
    tool_compiler = ToolGrammarCompiler(GrammarCompiler(vocabulary), GENERIC)
    turns = [tool_compiler.compile_turn(c["tools"], "required", parallel_tool_calls=False) for c in cases]
    print(f"SmolLM2-135M-Instruct {args.dtype}, {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{len(cases)} BFCL simple prompts (mean {statistics.mean(map(len, prompts)):.0f} tokens), max_tokens {args.max_tokens}")

    hf_seconds, hf_tokens = hf_one_at_a_time(model, prompts[: max(2, len(prompts) // 4)], args.max_tokens, eos)
    hf_rate = hf_tokens / hf_seconds
    rows = []
    passes = {}
    for label, grammar, jump in (("(b) engine, unconstrained", False, False), ("(c) engine + tool grammars", True, False),
                                 ("(d) (c) + jump-forward", True, True)):
        for concurrency in levels:
            engine = Engine(ModelRunner(model, max(levels), 2048), vocabulary, tokenizer, EngineConfig(jump_forward=jump))
            engine.start()
            requests = [EngineRequest(f"{label}-{concurrency}-{i}", p, GREEDY, args.max_tokens, grammar=t if grammar else None)
                        for i, (p, t) in enumerate(zip(prompts, turns))]
            # A warm-up request: first-visit masks, the mask kernel's build; not timed.
            run_engine(engine, requests[:1], 1)
            stats_before = (engine.stats.num_generated_tokens, engine.stats.num_jump_forward_tokens)
            seconds, tokens, texts = run_engine(engine, requests, concurrency)
            engine.shutdown()
            sampled = (engine.stats.num_generated_tokens - stats_before[0]) - (engine.stats.num_jump_forward_tokens - stats_before[1])
            if grammar:
                num_calls = sum(count_calls(t) for t in texts)
                passes[(label, concurrency)] = sampled / max(num_calls, 1)
            rows.append((label, concurrency, tokens / seconds, tokens))

    print()
    print("| setup | concurrency | tokens/s | vs (a) | vs (b) same concurrency |")
    print("|---|---:|---:|---:|---:|")
    print(f"| (a) HF generate, one at a time | any | {hf_rate:.1f} | 1.00 | |")
    base = {c: r for label, c, r, _ in rows if label.startswith("(b)")}
    for label, concurrency, rate, _ in rows:
        print(f"| {label} | {concurrency} | {rate:.1f} | {rate / hf_rate:.2f} | {rate / base[concurrency]:.2f} |")
    print()
    print("| forward passes per tool call | " + " | ".join(f"concurrency {c}" for c in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for label in ("(c) engine + tool grammars", "(d) (c) + jump-forward"):
        print(f"| {label} | " + " | ".join(f"{passes[(label, c)]:.1f}" for c in levels) + " |")
    saved = [1 - passes[("(d) (c) + jump-forward", c)] / passes[("(c) engine + tool grammars", c)] for c in levels]
    print(f"\njump-forward saves {statistics.median(saved):.0%} of forward passes per tool call (median over concurrency levels)")


if __name__ == "__main__":
    main()
