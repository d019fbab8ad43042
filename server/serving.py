"""What serving needs once the model is loaded, built by one setup path: the grammar side (format, vocabulary,
compilers) for `strictcall serve` and `strictcall compile` alike, then the model and engine for `serve`.

Invariant: the grammars a server uses and those `strictcall compile` stores are built from the same tokenizer,
vocabulary size and format by `build_grammars`, so the disk cache serves the server exactly what was warmed.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from strictcall.grammars import CompilerLimits, DiskCache, GrammarCompiler, ToolCallFormat, ToolGrammarCompiler, Vocabulary, detect_format, get_format
from strictcall.kernels import SamplingParams
from strictcall.kernels.native import set_cache_dir
from strictcall.server.compile_pool import CompilePool
from strictcall.server.config import ServerConfig, cache_dir
from strictcall.server.engine import Engine, EngineConfig
from strictcall.server.model_loader import (
    ModelSource,
    generation_defaults,
    grammar_cache_dir,
    load_model,
    model_config,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from strictcall.server.model_profiles import GENERIC, ModelProfile, profile_for
from strictcall.server.model_runner import ModelRunner
from strictcall.server.sequence import EngineRequest

logger = logging.getLogger("strictcall.server")


@dataclass
class Grammars:
    """The grammar side of a model: its call format, vocabulary and compilers (with their caches)."""

    format: ToolCallFormat
    vocabulary: Vocabulary
    compiler: GrammarCompiler
    tool_compiler: ToolGrammarCompiler


def build_grammars(tokenizer: Any, vocab_size: int, tool_format: str | None, disk_cache: DiskCache | None = None,
                   cache_mb: int = 1024) -> Grammars:
    """The format (`tool_format`, or detected from the chat template), vocabulary and compilers of a tokenizer."""
    fmt = get_format(tool_format) if tool_format else detect_format(getattr(tokenizer, "chat_template", None))
    vocabulary = Vocabulary.from_tokenizer(tokenizer, vocab_size=vocab_size, text_special_tokens=fmt.special_tokens)
    compiler = GrammarCompiler(vocabulary, CompilerLimits(max_cache_bytes=cache_mb << 20), disk_cache=disk_cache)
    return Grammars(fmt, vocabulary, compiler, ToolGrammarCompiler(compiler, fmt))


@dataclass
class ServingState:
    """What serving needs once the model is loaded."""

    tokenizer: Any
    grammars: Grammars
    engine: Engine
    max_model_len: int
    profile: ModelProfile = GENERIC
    # Sampling (and `max_tokens`) for requests that leave them unset: the model's generation_config, else its profile.
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    compile_pool: CompilePool = field(default_factory=CompilePool)

    def shutdown(self) -> None:
        self.compile_pool.shutdown()
        self.engine.shutdown()

    @property
    def vocabulary(self) -> Vocabulary:
        return self.grammars.vocabulary

    @property
    def format(self) -> ToolCallFormat:
        return self.grammars.format

    @functools.cached_property
    def call_opening(self) -> tuple[int, ...]:
        """The format's trigger (`<tool_call>`) as the model's tokens: where `auto_tool_bias` applies."""
        return tuple(self.tokenizer.encode(self.format.trigger, add_special_tokens=False))


def load_serving_state(config: ServerConfig, source: ModelSource | None = None) -> ServingState:
    """Load the model, build the grammars and the engine, start the engine and warm it up.

    Args:
        source: the model's files, if already resolved (the CLI checks them before the server starts).
    """
    started = time.perf_counter()
    set_cache_dir(cache_dir())
    source = source or resolve_model(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device, None if config.dtype else model_config(source))
    logger.info("loading model %s on %s (%s)", source.location, device, str(dtype).removeprefix("torch."))
    model, tokenizer = load_model(source, device, dtype)
    grammars = build_grammars(tokenizer, model.config.vocab_size, config.tool_format, DiskCache(grammar_cache_dir()), config.grammar_cache_mb)
    logger.info("building the engine (tool-call format: %s)", grammars.format.name)
    runner = ModelRunner(model, config.max_batch_size, config.max_model_len)
    engine = Engine(runner, grammars.vocabulary, tokenizer, EngineConfig(prefill_chunk_tokens=config.prefill_chunk_tokens,
                                                                         max_waiting=config.max_waiting, jump_forward=config.jump_forward))
    engine.start()
    profile = profile_for(source.is_default)
    defaults: dict[str, float] = {}
    if config.generation_config == "auto":
        defaults = generation_defaults(source) or dict(profile.sampling)
        if defaults:
            logger.info("default sampling for requests that set none (%s): %s", "generation_config.json" if not source.is_gguf else profile.name,
                        ", ".join(f"{k}={v:g}" for k, v in sorted(defaults.items())))
    state = ServingState(tokenizer, grammars, engine, runner.max_model_len, profile, defaults)
    _warm_up(state)
    # torch, transformers, the tokenizer and the vocabulary hold ~350k objects that live as long as the server: a
    # full collection scanned them all (~190 ms with every stream stalled, measured). Frozen, it sees new ones only.
    gc.collect()
    gc.freeze()
    logger.info("model ready in %.1f s (vocabulary %d tokens, context %d tokens, %d slots)", time.perf_counter() - started,
                grammars.vocabulary.vocab_size, runner.max_model_len, config.max_batch_size)
    return state


def _warm_up(state: ServingState) -> None:
    """One tiny constrained generation, so the first request does not pay for native kernels and caches."""
    done = threading.Event()
    grammar = state.grammars.compiler.compile_regex("(yes|no)")
    ids = state.tokenizer.encode("Answer yes or no:", add_special_tokens=False) or [0]
    request = EngineRequest("warmup", ids, SamplingParams(temperature=0.0), max_tokens=2, grammar=grammar)
    state.engine.submit(request, lambda event: done.set() if event.finish_reason else None)
    if not done.wait(timeout=120):
        logger.warning("the warm-up generation did not finish in 120 s")
