"""Microseconds per call of applying a token bitmask to CPU logits: strictcall vs its peers, side by side.

Peers: xgrammar's CPU kernel (C++), llguidance's torch path (torch.compile'd), and a naive ``masked_fill_``
from a ready bool mask. Every method gets the same fp32 logits and the same random masks (each bit set with
probability ``density``); compile time is excluded (every method is warmed up on every shape first), and the
median of repeated calls is reported. Run from the repo root:

    .venv/bin/python benchmarks/mask_apply.py            # the full table (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/mask_apply.py --quick    # batch 1 and 8, vocab 49,152 only
    .venv/bin/python benchmarks/mask_apply.py --backends # strictcall's native vs eager vs reference paths
    .venv/bin/python benchmarks/mask_apply.py --threads 1  # every method on one thread

On a shared machine use ``--threads 1``: when another process holds a core, torch's OpenMP kernels (the
llguidance and masked_fill columns) wait at their barriers for a scheduler tick, and their medians become
multiples of 4 ms that measure the neighbour, not the kernel. strictcall's native kernel is single-threaded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch._dynamo

from strictcall.kernels import apply_token_bitmask_inplace
from strictcall.kernels import bitmask as strictcall_bitmask

BATCHES = [1, 8, 32, 128]
VOCABS = [49_152, 152_064]
DENSITIES = [0.01, 0.50, 0.95]


def pack_bitmask(allowed: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) bool -> (batch, ceil(vocab / 32)) int32 in the field's bit order."""
    batch, vocab = allowed.shape
    words = (vocab + 31) // 32
    padded = torch.zeros(batch, words * 32, dtype=torch.bool)
    padded[:, :vocab] = allowed
    as_int = (padded.view(batch, words, 32).long() << torch.arange(32)).sum(-1)
    return ((as_int + 2**31) % 2**32 - 2**31).to(torch.int32)


def time_us(fn: Callable[[], object], budget_s: float = 0.25) -> float:
    for _ in range(3):  # warm-up: compiles, caches, page faults
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def peers() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]]:
    methods: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = {
        "strictcall": lambda logits, bitmask, disallowed: apply_token_bitmask_inplace(logits, bitmask),
    }
    try:
        from xgrammar.kernels.apply_token_bitmask_inplace_cpu import apply_token_bitmask_inplace_cpu

        methods["xgrammar cpu"] = lambda logits, bitmask, disallowed: apply_token_bitmask_inplace_cpu(logits, bitmask)
    except ImportError:
        print("xgrammar not installed: column skipped")
    try:
        import llguidance.torch

        methods["llguidance torch"] = lambda logits, bitmask, disallowed: llguidance.torch.apply_token_bitmask_inplace(
            logits, bitmask
        )
    except ImportError:
        print("llguidance not installed: column skipped")
    methods["masked_fill"] = lambda logits, bitmask, disallowed: logits.masked_fill_(disallowed, float("-inf"))
    return methods


def ours_by_backend() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]]:
    library = strictcall_bitmask.native_kernel()

    def eager(logits: torch.Tensor, bitmask: torch.Tensor, disallowed: torch.Tensor) -> None:
        strictcall_bitmask._apply_cpu_eager(logits, bitmask)

    def native(logits: torch.Tensor, bitmask: torch.Tensor, disallowed: torch.Tensor) -> None:
        strictcall_bitmask.apply_token_bitmask_native(library, logits, bitmask, None)

    def reference(logits: torch.Tensor, bitmask: torch.Tensor, disallowed: torch.Tensor) -> None:
        apply_token_bitmask_inplace(logits, bitmask, backend="torch")

    return {"native (cpu)": native, "eager fallback": eager, "torch reference": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, vocab 49,152 only")
    parser.add_argument("--backends", action="store_true", help="compare strictcall's own CPU paths")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    batches, vocabs = ([1, 8], [49_152]) if args.quick else (BATCHES, VOCABS)
    if args.threads:
        torch.set_num_threads(args.threads)
    # llguidance's torch.compile'd kernel recompiles per shape; with 8 shapes it would hit dynamo's default
    # limit and fall back to eager, which would understate it. Raise the limit so every peer stays compiled.
    torch._dynamo.config.cache_size_limit = 64
    methods = ours_by_backend() if args.backends else peers()
    names = list(methods)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 logits; median us per call")
    header = ["batch", "vocab", "density", *names] + ([] if args.backends else ["ours / fastest peer"])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    generator = torch.Generator().manual_seed(0)
    for vocab in vocabs:
        for batch in batches:
            for density in DENSITIES:
                allowed = torch.rand(batch, vocab, generator=generator) < density
                bitmask = pack_bitmask(allowed)
                disallowed = ~allowed
                base = torch.randn(batch, vocab, generator=generator)
                results: dict[str, float] = {}
                for name, method in methods.items():
                    logits = base.clone()
                    results[name] = time_us(lambda: method(logits, bitmask, disallowed))
                row = [f"{batch}", f"{vocab:,}", f"{density:.0%}"] + [f"{results[n]:,.0f}" for n in names]
                if not args.backends:
                    fastest_peer = min(v for n, v in results.items() if n != "strictcall")
                    row.append(f"{results['strictcall'] / fastest_peer:.2f}")
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
