"""The engines the benchmarks compare: the one tokenizer they share, what each engine builds from it, and the
peers' (xgrammar, llguidance) matchers behind one small interface, written once for every benchmark.

Every engine is built from the same Hugging Face tokenizer (SmolLM2-135M-Instruct from the local GGUF), so
masks have the same width and instances tokenize identically for all of them. Every peer is held to the layout
our grammars enforce (`layout.py`): one space after ':' and ',', none elsewhere.

A peer adapter owns one bitmask row (`row`: its numpy view) and drives a matcher with `fill` (the next mask into
the row), `accept` and `is_accepting`; `rewalk` puts a matcher back at its start for a second, cached walk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from layout import ITEM_SEPARATOR, KEY_SEPARATOR

XGRAMMAR_JSON_OPTIONS: dict[str, Any] = {"any_whitespace": False, "separators": (ITEM_SEPARATOR, KEY_SEPARATOR)}
LLGUIDANCE_JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ITEM_SEPARATOR,
    "key_separator": KEY_SEPARATOR,
}
XGRAMMAR_MAX_THREADS = 2  # the cores here


# --- the tokenizer and each engine's per-tokenizer object ----------------------------------------------------


@dataclass
class Engines:
    """The tokenizer and each engine's per-tokenizer object, with what each cost to build (paid once)."""

    tokenizer: Any
    vocabulary: Any
    vocab_size: int
    xgrammar_info: Any = None
    llguidance_tokenizer: Any = None
    startup_s: dict[str, float] = field(default_factory=dict)


def load_engines(peers: bool = True) -> Engines:
    """Load the SmolLM2 tokenizer and build our `Vocabulary` (content tokens included) and the peers' infos."""
    from transformers import AutoTokenizer

    from strictcall.grammars.vocabulary import Vocabulary
    from strictcall.server.model_loader import default_model_path

    startup: dict[str, float] = {}
    start = time.perf_counter()
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    startup["hf tokenizer (GGUF)"] = time.perf_counter() - start

    start = time.perf_counter()
    vocabulary = Vocabulary.from_tokenizer(tokenizer)
    _ = vocabulary.content_tokens  # the padded byte matrix: per tokenizer, built once
    startup["strictcall Vocabulary + content_tokens"] = time.perf_counter() - start
    engines = Engines(tokenizer, vocabulary, vocabulary.vocab_size, startup_s=startup)
    if not peers:
        return engines

    import llguidance.hf
    import xgrammar

    start = time.perf_counter()
    engines.xgrammar_info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocabulary.vocab_size)
    startup["xgrammar TokenizerInfo"] = time.perf_counter() - start
    start = time.perf_counter()
    engines.llguidance_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocabulary.vocab_size)
    startup["llguidance LLTokenizer"] = time.perf_counter() - start
    return engines


def encode(tokenizer: Any, text: str) -> list[int]:
    """The canonical tokenization a model would emit for `text` (no BOS/EOS)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


# --- the peers' matchers -------------------------------------------------------------------------------------


class XGrammarPeer:
    """xgrammar: a `GrammarCompiler` (`compiler`, replaceable through `new_compiler`) and its `GrammarMatcher`."""

    def __init__(self, engines: Engines, cache_enabled: bool):
        import xgrammar

        self.xgr = xgrammar
        self.info = engines.xgrammar_info
        self.bitmask = xgrammar.allocate_token_bitmask(1, engines.vocab_size)
        self.row = self.bitmask.numpy()[0]
        self.compiler = self.new_compiler(cache_enabled)

    def new_compiler(self, cache_enabled: bool) -> Any:
        return self.xgr.GrammarCompiler(self.info, max_threads=XGRAMMAR_MAX_THREADS, cache_enabled=cache_enabled)

    def compile_json_schema(self, schema: Any) -> Any:
        """strict_mode=True (xgrammar's default, like ours): no undeclared properties."""
        return self.compiler.compile_json_schema(json.dumps(schema), strict_mode=True, **XGRAMMAR_JSON_OPTIONS)

    def matcher(self, grammar: Any) -> Any:
        return self.xgr.GrammarMatcher(grammar)

    def rewalk(self, matcher: Any) -> Any:
        matcher.reset()
        return matcher

    def fill(self, matcher: Any) -> None:
        matcher.fill_next_token_bitmask(self.bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def is_accepting(self, matcher: Any) -> bool:
        return matcher.is_completed()


class LLGuidancePeer:
    """llguidance: grammars are strings (no compiler object, no grammar cache); each matcher compiles its own."""

    def __init__(self, engines: Engines):
        import llguidance
        import llguidance.numpy

        self.llg = llguidance
        self.fill_bitmask = llguidance.numpy.fill_next_token_bitmask
        self.tokenizer = engines.llguidance_tokenizer
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, engines.vocab_size)
        self.row = self.bitmask[0]

    def json_schema_grammar(self, schema: Any) -> str:
        """JSON Schema semantics: undeclared properties allowed where `additionalProperties` is absent."""
        return self.llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=LLGUIDANCE_JSON_OPTIONS)

    def matcher(self, grammar: str) -> Any:
        """A new matcher; a grammar it cannot compile shows as `matcher.is_error()`, not as an exception."""
        return self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)

    def rewalk(self, matcher: Any) -> Any:
        matcher.reset()
        return matcher

    def fill(self, matcher: Any) -> None:
        self.fill_bitmask(matcher, self.bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token) and not matcher.is_error()

    def is_accepting(self, matcher: Any) -> bool:
        return matcher.is_accepting()
