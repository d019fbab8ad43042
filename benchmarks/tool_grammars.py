"""Tool-call grammars for 1, 10 and 100 tools: strictcall's per-turn composition vs xgrammar and llguidance (issue 2).

Tools: the BFCL tools (simple + multiple), deduplicated by name, shuffled with a fixed seed and cut into
disjoint sets of 1, 10 and 100 (so every tool of a cold sample is new). Format: hermes
(`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`), the one xgrammar's `qwen_3` structural tag writes.
Whitespace: compact for every engine (one space after `:` and `,`) except where a peer's API cannot set it
(xgrammar's structural tags: its JSON there allows any whitespace).

Measured, each as the median over the samples (time to the first mask: compile + matcher + first
`fill_next_token_bitmask`):
- cold: a fresh `GrammarCompiler` + `ToolGrammarCompiler` per sample (every cache empty, every tool new); also per
  new tool (cold / N). Peers: a compiler with its cache
  disabled (xgrammar), a new matcher (llguidance has no grammar cache).
- warm, new combination: every tool already compiled once in the same compilers, then a turn never seen
  (the tools in a new order; for one tool, `parallel_tool_calls=False`). xgrammar's cache is keyed by the
  whole grammar, so a new combination is a full compile; llguidance compiles every time.
- repeat: the very same request again (turn cache / grammar cache hit).
- per token while the name is open: `fill_next_token_bitmask` + `accept_token` over a reference call (BFCL
  ground-truth arguments, tokenized by the SmolLM2 tokenizer) for the tokens before the name's closing quote,
  on the first walk (masks computed on first visit) and on a second walk (cached).

Modes and what each engine gets:
- `required`: ours `tool_choice="required"`; xgrammar `get_model_structural_tag("qwen_3", tool_choice="required")`;
  llguidance a Lark grammar of the same shape (`call ("\\n" call)*`, each call the hermes envelope around
  `%json` of that tool's parameters, compact). Also, as a reference without envelope, the JSON Schema union
  (`anyOf` over `{"name": const, "arguments": params}`) in xgrammar and llguidance.
- `auto`: ours `tool_choice="auto"`; xgrammar `qwen_3` with `tool_choice="auto"`; llguidance `StructTag` (lazy
  trigger `<tool_call>`), compact JSON via `x-guidance`.

    .venv/bin/python benchmarks/tool_grammars.py            # about 40 seconds here
    .venv/bin/python benchmarks/tool_grammars.py --sizes 1,10 --modes required
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from data import add_data_argument, bfcl_reference_arguments, bfcl_tools, data_dir  # noqa: E402
from layout import KeyOrderer, compact_json  # noqa: E402
from peers import LLGUIDANCE_JSON_OPTIONS, Engines, LLGuidancePeer, XGrammarPeer, encode, load_engines  # noqa: E402
from report import code_version, fmt_ratio, fmt_startup, fmt_time, markdown_table, percentile  # noqa: E402

SIZES = (1, 10, 100)
MODES = ("required", "auto")
SEED = 0
GOAL_COLD_PER_TOOL_S = 5e-3
GOAL_WARM_100_S = 1e-3


# --- the tool sets and their reference calls ---------------------------------------------------------------


def tool_sets(tools: list[dict[str, Any]], size: int, num_samples: int) -> list[list[dict[str, Any]]]:
    """`num_samples` disjoint sets of `size` tools (wrapping around when the tools run out)."""
    order = list(range(len(tools)))
    random.Random(SEED).shuffle(order)
    sets = []
    for i in range(num_samples):
        start = (i * size) % len(tools)
        sets.append([tools[order[(start + j) % len(tools)]] for j in range(size)])
    return sets


def reference_call(tools: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The last tool of the set whose BFCL ground-truth arguments validate under its schema (None: no such tool)."""
    for tool in reversed(tools):
        function = tool["function"]
        if function["name"] not in answers:
            continue
        orderer = KeyOrderer(function.get("parameters", {}))
        if orderer.is_valid(answers[function["name"]]):
            return function["name"], orderer.reorder(answers[function["name"]])
    return None


def name_open_tokens(vocabulary: Any, ids: list[int], text: str, name: str) -> int:
    """How many leading tokens are sampled before the name's closing quote is complete."""
    name_end = len(text[: text.index(json.dumps(name, ensure_ascii=False)) + len(json.dumps(name))].encode("utf-8"))
    offset = 0
    for i, token in enumerate(ids):
        if offset >= name_end:
            return i
        offset += len(vocabulary.token_bytes[token] or b"")
    return len(ids)


# --- engines: each variant gives cold / warm / repeat first-mask times and a walker --------------------------


class Variant:
    """One engine x grammar shape. `build(tools, mode, key)` compiles and returns a matcher (first mask filled)."""

    name = ""
    modes: tuple[str, ...] = MODES
    is_ours = False

    def reset_cold(self) -> None:
        """Start from empty caches."""

    def new_combination(self, tools: list[dict[str, Any]], mode: str, rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        shuffled = list(tools)
        if len(tools) > 1:
            while shuffled == tools:
                rng.shuffle(shuffled)
            return shuffled, {}
        return shuffled, {"parallel": False}

    def reference_text(self, name: str, arguments: dict[str, Any]) -> str:
        return "<tool_call>\n" + compact_json({"name": name, "arguments": arguments}) + "\n</tool_call>"


class Ours(Variant):
    name = "strictcall"
    is_ours = True

    def __init__(self, engines: Engines):
        from strictcall.grammars.compiler import GrammarCompiler
        from strictcall.grammars.formats import HERMES
        from strictcall.grammars.tools import ToolGrammarCompiler
        from strictcall.grammars.turn_matcher import TurnMatcher
        from strictcall.server.protocol import ToolsFile, tool_specs

        self.specs = lambda tools: tool_specs(ToolsFile.model_validate({"tools": tools}).tools)
        self.vocabulary = engines.vocabulary
        self.make = lambda: ToolGrammarCompiler(GrammarCompiler(self.vocabulary), HERMES)
        self.matcher_cls = TurnMatcher
        self.bitmask = np.zeros((1, self.vocabulary.num_words), dtype=np.int32)
        self.row = self.bitmask[0]
        self.compiler = self.make()

    def reset_cold(self) -> None:
        self.compiler = self.make()  # a fresh compiler: every cache (schemas, grammars, turns) empty

    def build(self, tools: list[dict[str, Any]], mode: str, parallel: bool = True) -> Any:
        turn = self.compiler.compile_turn(self.specs(tools), mode, parallel_tool_calls=parallel)
        matcher = self.matcher_cls(turn)
        matcher.fill_next_token_bitmask(self.bitmask, 0)
        return matcher

    def rewalk(self, matcher: Any) -> Any:
        return self.matcher_cls(matcher.turn)

    def fill(self, matcher: Any) -> None:
        matcher.fill_next_token_bitmask(self.bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)


class _XGrammarBase(Variant, XGrammarPeer):
    def __init__(self, engines: Engines):
        XGrammarPeer.__init__(self, engines, cache_enabled=True)

    def reset_cold(self) -> None:
        self.compiler = self.new_compiler(cache_enabled=False)

    def warm_compiler(self) -> None:
        self.compiler = self.new_compiler(cache_enabled=True)

    def build(self, tools: list[dict[str, Any]], mode: str, parallel: bool = True) -> Any:
        matcher = self.matcher(self.compile(tools, mode, parallel))
        self.fill(matcher)
        return matcher


class XGrammarTag(_XGrammarBase):
    name = "xgrammar structural tag (qwen_3)"

    def compile(self, tools: list[dict[str, Any]], mode: str, parallel: bool) -> Any:
        tag = self.xgr.get_model_structural_tag("qwen_3", tools=tools, tool_choice=mode, reasoning="disabled", parallel_tool_calls=parallel)
        return self.compiler.compile_structural_tag(tag)


def union_schema(tools: list[dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    return {"anyOf": [
        {"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                          "arguments": t["function"].get("parameters", {"type": "object"})},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in tools
    ]}


class _Union:
    """The reference without envelope: `union_schema`, `required` only, the call's JSON alone."""

    modes = ("required",)

    def reference_text(self, name: str, arguments: dict[str, Any]) -> str:
        return compact_json({"name": name, "arguments": arguments})


class XGrammarUnion(_Union, _XGrammarBase):
    name = "xgrammar JSON union"

    def compile(self, tools: list[dict[str, Any]], mode: str, parallel: bool) -> Any:
        return self.compile_json_schema(union_schema(tools))


class _LLGuidanceBase(Variant, LLGuidancePeer):
    def build(self, tools: list[dict[str, Any]], mode: str, parallel: bool = True) -> Any:
        matcher = self.matcher(self.grammar(tools, mode, parallel))
        if matcher.is_error():
            raise RuntimeError(f"{self.name}: {matcher.get_error()[:300]}")
        self.fill(matcher)
        return matcher


def _compact_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(tool["function"].get("parameters", {"type": "object"}))
    schema["x-guidance"] = dict(LLGUIDANCE_JSON_OPTIONS)
    return schema


class LLGuidanceTag(_LLGuidanceBase):
    name = "llguidance Lark / StructTag"

    def grammar(self, tools: list[dict[str, Any]], mode: str, parallel: bool) -> str:
        if mode == "auto":
            tags = [self.llg.StructTag(trigger="<tool_call>", begin=f'<tool_call>\n{{"name": {json.dumps(t["function"]["name"])}, "arguments": ',
                                       grammar=_compact_parameters(t), end="}\n</tool_call>") for t in tools]
            return self.llg.StructTag.to_grammar(tags, assume_special=False)
        # required: one or more calls, hermes envelope, nothing else (the shape of our `required` turn).
        lines = ["%llguidance {}", 'start: call ("\\n" call)*' if parallel else "start: call",
                 "call: " + " | ".join(f"tool_{i}" for i in range(len(tools)))]
        for i, t in enumerate(tools):
            head = json.dumps(f'<tool_call>\n{{"name": {json.dumps(t["function"]["name"])}, "arguments": ')
            lines.append(f'tool_{i}: {head} %json {json.dumps(_compact_parameters(t))} "}}\\n</tool_call>"')
        return "\n".join(lines) + "\n"


class LLGuidanceUnion(_Union, _LLGuidanceBase):
    name = "llguidance JSON union"

    def grammar(self, tools: list[dict[str, Any]], mode: str, parallel: bool) -> str:
        return self.json_schema_grammar(union_schema(tools))


# --- measurement -------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def walk_times(variant: Variant, matcher: Any, ids: list[int]) -> tuple[list[float], bool]:
    """Per-token fill + accept times over `ids`; False if a token was refused."""
    clock = time.perf_counter
    times = []
    for token in ids:
        start = clock()
        variant.fill(matcher)
        ok = variant.accept(matcher, token)
        times.append(clock() - start)
        if not ok:
            return times, False
    return times, True


def measure(variant: Variant, engines: Engines, sets: list[list[dict[str, Any]]], mode: str,
            answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rng = random.Random(SEED)
    cold, warm, repeat, walk_first, walk_cached = [], [], [], [], []
    walk_whole_first: list[float] = []
    rejected = num_walked = 0
    for tools in sets:
        variant.reset_cold()
        elapsed, matcher = timed(lambda: variant.build(tools, mode))
        cold.append(elapsed)
        # Per-token cost while the name is open, on this fresh grammar: first walk, then cached.
        reference = reference_call(tools, answers)
        if reference is not None:
            name, arguments = reference
            text = variant.reference_text(name, arguments)
            ids = encode(engines.tokenizer, text)
            num_open = name_open_tokens(engines.vocabulary, ids, text, name)
            times, ok = walk_times(variant, matcher, ids)
            num_walked += 1
            rejected += not ok
            walk_first += times[:num_open]
            walk_whole_first += times
            if ok:
                times, _ = walk_times(variant, variant.rewalk(matcher), ids)
                walk_cached += times[:num_open]
        # Warm: same compilers with every tool compiled once (the cold build above did it), a new combination.
        if isinstance(variant, _XGrammarBase):
            variant.warm_compiler()
            variant.build(tools, mode)
        combination, options = variant.new_combination(tools, mode, rng)
        elapsed, _ = timed(lambda: variant.build(combination, mode, options.get("parallel", True)))
        warm.append(elapsed)
        elapsed, _ = timed(lambda: variant.build(combination, mode, options.get("parallel", True)))
        repeat.append(elapsed)
    size = len(sets[0])
    return {
        "variant": variant.name, "mode": mode, "num_tools": size, "num_samples": len(sets),
        "cold_p50_s": statistics.median(cold), "cold_max_s": max(cold), "cold_per_tool_p50_s": statistics.median(cold) / size,
        "warm_new_combination_p50_s": statistics.median(warm), "repeat_p50_s": statistics.median(repeat),
        "name_open_token_first_p50_s": percentile(walk_first, 50),
        "name_open_token_cached_p50_s": percentile(walk_cached, 50),
        "whole_call_token_first_p50_s": percentile(walk_whole_first, 50),
        "num_name_open_tokens": len(walk_first), "num_reference_calls": num_walked, "num_reference_calls_rejected": rejected,
        "cold_s": cold, "warm_s": warm,
    }


def render(rows: list[dict[str, Any]]) -> str:
    t = fmt_time
    header = ["tools", "mode", "engine", "samples", "cold p50", "cold max", "cold p50 / new tool", "warm new combination p50",
              "repeat p50", "name-open token p50 (first walk)", "(cached)", "ref. calls rejected"]
    out: list[list[str]] = []
    keys = ["cold_p50_s", "cold_max_s", "cold_per_tool_p50_s", "warm_new_combination_p50_s", "repeat_p50_s",
            "name_open_token_first_p50_s", "name_open_token_cached_p50_s"]
    for size in sorted({r["num_tools"] for r in rows}):
        for mode in MODES:
            group = [r for r in rows if r["num_tools"] == size and r["mode"] == mode]
            if not group:
                continue
            for r in group:
                out.append([str(size), mode, r["variant"], str(r["num_samples"])] + [t(r[k]) for k in keys]
                           + [f'{r["num_reference_calls_rejected"]}/{r["num_reference_calls"]}'])
            ours = next((r for r in group if r["variant"] == "strictcall"), None)
            peers = [r for r in group if r["variant"] != "strictcall"]
            if ours and peers:
                out.append([str(size), mode, "**ours / best peer**", ""]
                           + [fmt_ratio(ours[k], min(p[k] for p in peers)) for k in keys] + [""])
    return markdown_table(header, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--samples", default="20,10,5", help="samples per size (ours), in --sizes order")
    parser.add_argument("--peer-samples", default="10,5,3", help="samples per size for the peers (100-tool compiles take seconds)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", default=".bench/tool_grammars.json")
    add_data_argument(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    samples = dict(zip(sizes, (int(s) for s in args.samples.split(","))))
    peer_samples = dict(zip(sizes, (int(s) for s in args.peer_samples.split(","))))

    root = data_dir(args.data)  # before the tokenizer loads: a missing folder fails at once
    args.data = str(root)  # the JSON says which data folder the numbers come from

    started = time.perf_counter()
    engines = load_engines(peers=not args.no_peers)
    tools = bfcl_tools(root)
    answers = bfcl_reference_arguments(root)
    variants: list[Variant] = [Ours(engines)]
    if not args.no_peers:
        variants += [XGrammarTag(engines), LLGuidanceTag(engines), XGrammarUnion(engines), LLGuidanceUnion(engines)]
    rows = []
    for size in sizes:
        for mode in modes:
            for variant in variants:
                if mode not in variant.modes:
                    continue
                count = samples.get(size, 3) if variant.is_ours else peer_samples.get(size, 3)
                sets = tool_sets(tools, size, count)
                try:
                    row = measure(variant, engines, sets, mode, answers)
                except Exception as error:  # noqa: BLE001 - one engine failing must not hide the others
                    print(f"  {variant.name} {size} tools {mode}: {type(error).__name__}: {str(error)[:200]}", file=sys.stderr)
                    continue
                rows.append(row)
                print(f"  {size:>3} tools {mode:8} {variant.name}: cold {fmt_time(row['cold_p50_s'])}, "
                      f"warm {fmt_time(row['warm_new_combination_p50_s'])}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started

    version = code_version()
    print(f"## Tool-call grammars: {len(tools)} BFCL tools (deduplicated by name), hermes format, SmolLM2 tokenizer\n")
    print(f"strictcall at {version}\n")
    print(fmt_startup(engines.startup_s) + "\n")
    print(render(rows))
    ours = {(r["num_tools"], r["mode"]): r for r in rows if r["variant"] == "strictcall"}
    goals = []
    for (size, mode), r in sorted(ours.items()):
        goals.append(f"{size} tools {mode}: cold/new tool {fmt_time(r['cold_per_tool_p50_s'])} "
                     f"({'meets' if r['cold_per_tool_p50_s'] <= GOAL_COLD_PER_TOOL_S else 'misses'} <= 5 ms)"
                     + (f", warm {fmt_time(r['warm_new_combination_p50_s'])} "
                        f"({'meets' if r['warm_new_combination_p50_s'] <= GOAL_WARM_100_S else 'misses'} <= 1 ms)" if size == 100 else ""))
    print("\nGoals (issue 2): " + "; ".join(goals))
    print(f"Wall time {elapsed:.0f} s.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "startup_s": engines.startup_s, "wall_s": elapsed, "code_version": version, "rows": rows}, indent=1))
    print(f"\nJSON results: {out}")


if __name__ == "__main__":
    main()
