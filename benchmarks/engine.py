"""End-to-end generation throughput on SmolLM2 on this CPU, side by side in one run.

(a) Hugging Face `generate`, one request at a time (what a naive server does);
(b) our engine, unconstrained;  (c) our engine with tool grammars;  (d) (c) + jump-forward.
Aggregate tokens/s at 1, 4 and 16 concurrent requests (closed loop: each client sends its next request when
the last one finishes), and model forward passes per tool call with and without jump-forward.

(b) and (c) do different work: a tool call ends after ~30-80 tokens, free text runs to max_tokens, so at 16
clients (c)'s batch thins out sooner. (b=) is (b) with each request held to exactly (c)'s output length
(`min_tokens = max_tokens`), so (c) / (b=) is the cost of the grammar alone, and the last column is the
engine thread's own measure of it (time in bitmasks, accepting tokens and forced text, over that plus forwards).

The prompts are BFCL questions with their tools described in the system message (the `generic` format, as the
server does for SmolLM2); (c) and (d) force exactly one call (`tool_choice: required`, no parallel calls).

On 2 CPU cores the default prompts (~285 tokens: the tools description) make the run prefill-bound: 16 prompts
are 4,560 prompt tokens for ~1,500 output tokens, and a 135M model computes ~330 tokens/s in total here.
`--short-prompts` gives the decode-bound picture.

Usage: .venv/bin/python benchmarks/engine.py [--requests 16] [--max-tokens 96] [--concurrency 1,4,16] [--rounds 3] [--short-prompts]
       [--dtype float32|bfloat16] [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `strictcall serve` sets it (server/cli.py), before torch loads
import torch  # noqa: E402

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.formats import GENERIC
from strictcall.grammars.tools import ToolGrammarCompiler
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.kernels import SamplingParams
from strictcall.server.engine import Engine, EngineConfig
from strictcall.server.model_loader import load_model, resolve_model
from strictcall.server.model_runner import ModelRunner
from strictcall.server.protocol import ToolsFile, tool_specs
from strictcall.server.sequence import EngineRequest
from strictcall.server.tool_prompt import render_tools_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import add_data_argument, bfcl_file, data_dir, read_jsonl  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


@dataclasses.dataclass(frozen=True)
class Setup:
    key: str
    label: str
    grammar: bool
    jump_forward: bool
    same_lengths_as_c: bool = False  # min_tokens = max_tokens = (c)'s length per request: the same work as (c)


SETUPS = (
    Setup("b", "(b) engine, unconstrained", grammar=False, jump_forward=False),
    Setup("c", "(c) engine + tool grammars", grammar=True, jump_forward=False),
    Setup("b=", "(b=) unconstrained, (c)'s output lengths", grammar=False, jump_forward=False, same_lengths_as_c=True),
    Setup("d", "(d) (c) + jump-forward", grammar=True, jump_forward=True),
)


@dataclasses.dataclass(frozen=True)
class Result:
    rate: float  # output tokens/s, all clients together
    passes: float | None  # model forward passes (sampled tokens) per complete tool call
    grammar_share: float  # grammar work / (grammar work + forwards), engine thread time


def bfcl_cases(path: Path, count: int) -> list[dict]:
    return list(read_jsonl(path))[:count]


def render_prompt(tokenizer, case: dict, with_tools: bool = True) -> list[int]:
    system = [{"role": "system", "content": render_tools_prompt(GENERIC, [t["function"] for t in case["tools"]])}] if with_tools else []
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


def run_engine(engine: Engine, requests: list[EngineRequest], concurrency: int) -> tuple[float, int, list[str], list[int]]:
    """Closed loop with `concurrency` clients; returns (seconds, output tokens, texts, output tokens per request)."""
    texts: dict[str, str] = {}
    lengths: dict[str, int] = {}

    async def client(queue: asyncio.Queue) -> int:
        tokens = 0
        while not queue.empty():
            request = queue.get_nowait()
            parts = []
            async for _, event in engine.generate([request]):
                parts.append(event.text)
                if event.finish_reason:
                    tokens += event.num_output_tokens
                    lengths[request.request_id] = event.num_output_tokens
            texts[request.request_id] = "".join(parts)
        return tokens

    async def main() -> int:
        queue: asyncio.Queue = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        return sum(await asyncio.gather(*(client(queue) for _ in range(concurrency))))

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return time.perf_counter() - start, tokens, [texts[r.request_id] for r in requests], [lengths[r.request_id] for r in requests]


def run_setup(model, vocabulary: Vocabulary, tokenizer, setup: Setup, prompts: list[list[int]], turns: list, concurrency: int,
              max_tokens: int, call_lengths: list[int], slots: int) -> tuple[Result, list[int]]:
    """One timed closed-loop run of one setup on a fresh engine; returns its result and each request's output length."""
    engine = Engine(ModelRunner(model, slots, 2048), vocabulary, tokenizer, EngineConfig(jump_forward=setup.jump_forward))
    engine.start()
    requests = []
    for i, (prompt, turn) in enumerate(zip(prompts, turns)):
        budget = call_lengths[i] if setup.same_lengths_as_c else max_tokens
        requests.append(EngineRequest(f"{setup.key}-{concurrency}-{i}", prompt, GREEDY, max_tokens=budget,
                                      min_tokens=budget if setup.same_lengths_as_c else 0, grammar=turn if setup.grammar else None))
    # A warm-up request (the mask kernel's build, request 0's first-visit masks); not timed.
    run_engine(engine, requests[:1], 1)
    before = dataclasses.replace(engine.stats)
    seconds, tokens, texts, lengths = run_engine(engine, requests, concurrency)
    engine.shutdown()
    after = engine.stats
    sampled = (after.num_generated_tokens - before.num_generated_tokens) - (after.num_jump_forward_tokens - before.num_jump_forward_tokens)
    grammar_s = after.grammar_seconds - before.grammar_seconds
    forward_s = after.forward_seconds - before.forward_seconds
    passes = sampled / max(sum(count_calls(t) for t in texts), 1) if setup.grammar else None
    return Result(tokens / seconds, passes, grammar_s / (grammar_s + forward_s)), lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per concurrency level; the table shows medians")
    parser.add_argument("--short-prompts", action="store_true",
                        help="the user question only (~40 tokens, no tools description): decode-bound instead of prefill-bound")
    add_data_argument(parser)
    args = parser.parse_args()
    cases_file = bfcl_file(data_dir(args.data), "simple")  # before the model loads: a missing file fails at once
    levels = [int(c) for c in args.concurrency.split(",")]

    model, tokenizer = load_model(resolve_model(None), torch.device("cpu"), getattr(torch, args.dtype))
    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    eos = list(vocabulary.eos_token_ids)
    cases = bfcl_cases(cases_file, args.requests)
    prompts = [render_prompt(tokenizer, c, with_tools=not args.short_prompts) for c in cases]
    print(f"SmolLM2-135M-Instruct {args.dtype}, {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{len(cases)} BFCL simple prompts (mean {statistics.mean(map(len, prompts)):.0f} tokens), max_tokens {args.max_tokens}, "
          f"median of {args.rounds} interleaved rounds")

    hf_seconds, hf_tokens = hf_one_at_a_time(model, prompts[: max(2, len(prompts) // 4)], args.max_tokens, eos)
    hf_rate = hf_tokens / hf_seconds
    runs: dict[tuple[str, int], list[Result]] = {}
    for concurrency in levels:
        for _ in range(args.rounds):
            # Fresh grammars every round: each timed run meets its tool sets' masks for the first time.
            tool_compiler = ToolGrammarCompiler(GrammarCompiler(vocabulary), GENERIC)
            turns = [tool_compiler.compile_turn(tool_specs(ToolsFile.model_validate({"tools": c["tools"]}).tools), "required", parallel_tool_calls=False)
                     for c in cases]
            call_lengths: list[int] = []  # (c)'s output tokens per request, for (b=)
            for setup in SETUPS:
                result, lengths = run_setup(model, vocabulary, tokenizer, setup, prompts, turns, concurrency, args.max_tokens, call_lengths, max(levels))
                if setup.key == "c":
                    call_lengths = lengths
                runs.setdefault((setup.key, concurrency), []).append(result)
    results = {key: Result(statistics.median(r.rate for r in rs), rs[0].passes, statistics.median(r.grammar_share for r in rs))
               for key, rs in runs.items()}

    print()
    print("| setup | concurrency | tokens/s | vs (a) | vs (b) | vs (b=) | grammar share of engine time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| (a) HF generate, one at a time | any | {hf_rate:.1f} | 1.00 | | | |")
    for setup in SETUPS:
        for concurrency in levels:
            result = results[(setup.key, concurrency)]
            vs_b = result.rate / results[("b", concurrency)].rate
            vs_same = f"{result.rate / results[('b=', concurrency)].rate:.2f}" if setup.grammar else ""
            print(f"| {setup.label} | {concurrency} | {result.rate:.1f} | {result.rate / hf_rate:.2f} | {vs_b:.2f} | {vs_same} | "
                  f"{result.grammar_share:.1%} |")
    print()
    print("| forward passes per tool call | " + " | ".join(f"concurrency {c}" for c in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for key in ("c", "d"):
        label = next(s.label for s in SETUPS if s.key == key)
        print(f"| {label} | " + " | ".join(f"{results[(key, c)].passes:.1f}" for c in levels) + " |")
    saved = [1 - results[("d", c)].passes / results[("c", c)].passes for c in levels]
    print(f"\njump-forward saves {statistics.median(saved):.0%} of forward passes per tool call (median over concurrency levels)")

if __name__ == "__main__":
    main()
