"""strictcall's matchers in the shape of vLLM's structured-output grammar (`StructuredOutputGrammar`), and the
engine-level compiler that builds them from turn specs (one compile cache per engine core and format).

No vLLM import here: vLLM only calls these methods (it types them by its abstract classes, but checks none at
run time), so the adapters are tested without vLLM; `backend.py` puts them behind vLLM's backend interface.

With a `budget` (the request's tokens in all, set by the plugin in the engine core), masks are strictcall's
budget-aware ones: a turn that can still end complete within the tokens left always does (calls arrive whole).

Invariant: the mask `fill_bitmask` writes and the tokens `accept_tokens` takes agree exactly as the matcher's
do, with one mapping on top: the request's own stop tokens (`stop_token_ids`, what vLLM stops on) are the
turn's end, in place of the vocabulary's end-of-turn ids. `validate_tokens` never moves the matcher, and
`rollback(n)` undoes the last n tokens `accept_tokens` advanced by (speculative decoding).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from strictcall.grammars import DiskCache, Matcher, ToolGrammarCompiler
from strictcall.server.model_loader import grammar_cache_dir
from strictcall.server.serving import Grammars, build_grammars
from strictcall.vllm.turn_spec import TurnSpec, compile_turn_spec

logger = logging.getLogger("strictcall.vllm")


class MatcherGrammar:
    """One request's position in its turn, as vLLM's `StructuredOutputGrammar` (accept, validate, rollback, fill).

    Args:
        matcher: a fresh matcher of the request's grammar.
        grammars: the vocabulary's grammar side (its end-of-turn ids are remapped to `stop_token_ids`).
        stop_token_ids: the ids vLLM stops this request on; None or empty keeps the vocabulary's own.
    """

    def __init__(self, matcher: Matcher, grammars: Grammars, stop_token_ids: Iterable[int] | None = None):
        self.matcher = matcher
        vocabulary = grammars.vocabulary
        own = frozenset(vocabulary.eos_token_ids)
        ends = frozenset(t for t in (stop_token_ids or ()) if 0 <= t < vocabulary.vocab_size) or own
        self._ends = ends
        # A token the matcher reads as the end (any of the vocabulary's own end ids is the same to it).
        self._end_id = vocabulary.eos_token_ids[0]
        self._own_ends = own
        self._remap: tuple[np.ndarray, np.ndarray] | None = None
        if ends != own:
            self._remap = (~vocabulary.eos_bitmask, _pack(sorted(ends), vocabulary.num_words))
        self._steps = 0  # tokens accepted (rollback's unit)
        self._terminated = False
        # The tokens the request may emit in all (max_tokens and the context), when known: masks then take only
        # tokens after which the turn can still end within what is left (strictcall's budget-aware closing).
        self.budget: int | None = None

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        """Advance by the tokens vLLM sampled; False (and a log line) at the first one the grammar refuses.

        Tokens after the end are ignored, as xgrammar's adapter does (vLLM stops the request there).
        """
        for token in tokens:
            if self._terminated:
                return True
            if not self._accept(token):
                logger.error("strictcall grammar refused token %d for request %s", token, request_id)
                return False
        return True

    def _accept(self, token: int) -> bool:
        if token in self._ends:
            accepted = self.matcher.accept_token(self._end_id)
        elif token in self._own_ends:
            return False  # not an end for this request, and it writes no text
        else:
            accepted = self.matcher.accept_token(token)
        if accepted:
            self._steps += 1
            self._terminated = self.matcher.is_terminated()
        return accepted

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        """The longest prefix of `tokens` the grammar accepts from here (speculative drafts); the state is unchanged."""
        if self._terminated:
            return []
        accepted: list[int] = []
        for token in tokens:
            if not self._accept(token):
                break
            accepted.append(token)
            if self._terminated:
                break
        if accepted:
            self.rollback(len(accepted))
        return accepted

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        self.matcher.rollback(num_tokens)
        self._steps -= num_tokens
        self._terminated = self.matcher.is_terminated()

    def tokens_left(self) -> int | None:
        """Tokens the request may still emit, this one included (None: no budget known)."""
        return None if self.budget is None else max(self.budget - self._steps, 0)

    def fill_bitmask(self, bitmask: Any, idx: int) -> None:
        """Write the allowed tokens into row `idx` of vLLM's int32 bitmask (torch, on the CPU)."""
        if self._remap is None:
            self.matcher.fill_next_token_bitmask(bitmask, idx, self.tokens_left())
            return
        keep, ends = self._remap
        row = self.matcher.next_token_bitmask(self.tokens_left())
        may_end = self.matcher.is_accepting()
        out = (row & keep) | ends if may_end else row & keep
        target = bitmask[idx]
        (target if isinstance(target, np.ndarray) else target.numpy())[:] = out  # vLLM's bitmask lives on the CPU

    def is_terminated(self) -> bool:
        return self._terminated

    def reset(self) -> None:
        self.matcher.reset()
        self._steps = 0
        self._terminated = False

    @property
    def num_processed_tokens(self) -> int:
        return self._steps


def _pack(token_ids: list[int], num_words: int) -> np.ndarray:
    """A packed int32 mask row (bit t % 32 of word t // 32) allowing exactly `token_ids`."""
    words = np.zeros(num_words, dtype=np.uint32)
    ids = np.asarray(token_ids, dtype=np.int64)
    np.bitwise_or.at(words, ids // 32, (np.uint32(1) << (ids % 32).astype(np.uint32)))
    return words.view(np.int32)


class TurnCompiler:
    """The engine's grammar side: per tool-call format, one vocabulary and compiler (with its caches), built once.

    Args:
        tokenizer: the engine's tokenizer (a Hugging Face tokenizer).
        vocab_size: the model's logits width (vLLM's `get_vocab_size()`).
        disk_cache: use strictcall's grammar disk cache (what `strictcall compile` warms).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, disk_cache: bool = True):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._disk_cache = DiskCache(grammar_cache_dir()) if disk_cache else None
        self._by_format: dict[str, Grammars] = {}
        self._lock = threading.Lock()

    def grammars(self, format: str) -> Grammars:
        with self._lock:
            grammars = self._by_format.get(format)
            if grammars is None:
                grammars = build_grammars(self.tokenizer, self.vocab_size, format, self._disk_cache)
                self._by_format[format] = grammars
        return grammars

    def compile(self, spec_text: str, stop_token_ids: Iterable[int] | None = None) -> MatcherGrammar:
        """A grammar for one request from its turn spec (the turn is compiled once per spec and cached).

        Raises:
            APIError, ValueError: the spec cannot be compiled (vLLM fails that request alone).
        """
        spec = TurnSpec.from_json(spec_text)
        grammars = self.grammars(spec.format)
        turn = compile_turn_spec(grammars.tool_compiler, spec)
        return MatcherGrammar(turn.new_matcher(), grammars, stop_token_ids)

    @property
    def num_words(self) -> int:
        return (self.vocab_size + 31) // 32


_PROCESS_COMPILERS: dict[tuple[str, int], TurnCompiler] = {}
_PROCESS_LOCK = threading.Lock()


def process_compiler(tokenizer: Any, format: str) -> ToolGrammarCompiler:
    """This process's tool compiler for a tokenizer and format (the API process checks turns with it; its cache
    makes a tool set seen before a lookup)."""
    size = max(tokenizer.get_vocab().values()) + 1
    key = (str(getattr(tokenizer, "name_or_path", "")), size)
    with _PROCESS_LOCK:
        compiler = _PROCESS_COMPILERS.get(key)
        if compiler is None:
            compiler = _PROCESS_COMPILERS[key] = TurnCompiler(tokenizer, size)
    return compiler.grammars(format).tool_compiler
