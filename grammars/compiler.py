"""Compile JSON Schemas and regexes into `CompiledGrammar`s over one vocabulary, cached by content.

Invariant: a `CompiledGrammar` is logically immutable and shared by every request that uses the same schema;
what it computes lazily (DFA rows, token masks) depends only on the state, so caching never changes answers.
Compile cost is the NFA (linear in the regex); masks are paid on a state's first visit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from strictcall.grammars.automaton import DEAD, DEFAULT_MAX_DFA_STATES, DEFAULT_MAX_NFA_STATES, DfaState, LazyDfa, Nfa, paused_gc
from strictcall.grammars.cache import ByteBudget, LruCache, Tracker
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.errors import GrammarError
from strictcall.grammars.json_schema import SchemaOptions, json_schema_to_regex
from strictcall.grammars.masks import allowed_token_ids, pack_token_bitmask, tokens_through_accepting
from strictcall.grammars.matcher import GrammarMatcher
from strictcall.grammars.regex import parse_grammar
from strictcall.grammars.vocabulary import Vocabulary

_DEAD_STATE: DfaState = frozenset()


@dataclass(frozen=True)
class CompilerLimits:
    """Resource limits, each with its cost.

    Attributes:
        max_nfa_states: NFA size; ~100 bytes of Python objects per state.
        max_dfa_states: DFA states a grammar keeps; each costs a 1 KB transition row and, once visited, a
            token mask of ceil(V/32) * 4 bytes (6 KB for a 49,152-token vocabulary). Past it the states are
            flushed and made again as needed (slower, never an error: a limit is never met mid-generation).
        max_cached_grammars: compiled grammars kept (least recently used dropped first).
        max_cache_bytes: the memory all cached grammars and turns of a compiler may hold, masks computed during
            generation included (`--grammar-cache-mb`); past it the least recently used are dropped. One grammar
            measured up to ~245 MB (50,000 DFA states, their masks), so this is also the most one schema can hold.
    """

    max_nfa_states: int = DEFAULT_MAX_NFA_STATES
    max_dfa_states: int = DEFAULT_MAX_DFA_STATES
    max_cached_grammars: int = 1024
    max_cache_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_nfa_states", "max_dfa_states", "max_cached_grammars", "max_cache_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompilerLimits.{name} must be at least 1, got {getattr(self, name)}")


class CompiledGrammar:
    """A regex's lazy DFA over one vocabulary, with token masks cached per state.

    Attributes:
        regex: the regex the grammar enforces.
        vocabulary: the vocabulary its masks are over.
        unenforced: (JSON pointer, keyword) pairs of a schema compiled with strict=False that are not enforced.
    """

    def __init__(self, regex: str, vocabulary: Vocabulary, limits: CompilerLimits, unenforced: tuple[tuple[str, str], ...] = (),
                 budget: ByteBudget | None = None):
        self.regex = regex
        self.vocabulary = vocabulary
        self.unenforced = unenforced
        main, rules = parse_grammar(regex)
        self.dfa = LazyDfa(Nfa(main, limits.max_nfa_states, rules), limits.max_dfa_states)
        self._masks: dict[int, np.ndarray] = {}
        # Per visited state: the most bytes-to-accept any allowed token leaves (budget checks skip states below it).
        self._max_next_distance: dict[int, int] = {}
        self._exits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._budget_masks: LruCache[np.ndarray] = LruCache(256)  # (state, bytes left) -> mask, for the last tokens
        self._extra_bytes = 0  # masks and exits
        self._lock = threading.RLock()  # around every use of DFA ids (a flush renumbers the states)
        self._tracker: Tracker | None = None
        self.attach(budget)

    def attach(self, budget: ByteBudget | None) -> None:
        """Count this grammar's bytes in `budget` from now on (the compiler's; re-attached after a disk load)."""
        self._tracker = None if budget is None else budget.track(self)
        self._account()

    @property
    def num_bytes(self) -> int:
        """An estimate of the memory the grammar holds: NFA (~120 B a state), DFA rows (1 KB each, plus ~0.5 KB for
        the state's NFA set), masks (ceil(V/32) * 4 B each) and exits."""
        return len(self.dfa.nfa.epsilons) * 120 + len(self.dfa.table) * 1040 + self.dfa.num_states * 512 + self._extra_bytes

    def _account(self) -> None:
        if self._tracker is not None:
            self._tracker.set(self.num_bytes)

    @property
    def start_state(self) -> DfaState:
        return self.dfa.start_threads

    def new_matcher(self) -> GrammarMatcher:
        return GrammarMatcher(self)

    def __getstate__(self) -> dict:
        # The vocabulary and the budget are the compiler's, re-attached on load; the lock is not picklable.
        state = self.__dict__.copy()
        del state["vocabulary"], state["_lock"], state["_tracker"], state["_budget_masks"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._tracker = None
        self._budget_masks = LruCache(256)

    def _id(self, state: DfaState) -> int:
        """The DFA id of `state` (callers hold the lock), after a flush if the table is full: the flush point of
        every operation, so ids are never held across one."""
        self.dfa.flush_if_full(self._forget_states)
        return self.dfa.intern(state)

    def _forget_states(self) -> None:
        """Drop what is cached by DFA id (during a flush, inside its epoch: lock-free readers see it)."""
        self._masks.clear()
        self._max_next_distance.clear()
        self._exits.clear()
        self._budget_masks = LruCache(256)
        self._extra_bytes = 0
        self._account()

    def warm_up(self, max_states: int) -> int:
        """Compute the masks of up to `max_states` states reachable from the start (for the disk cache).

        Returns:
            The number of states whose masks are now cached.
        """
        with self._lock:
            start = self._id(self.start_state)
            seen = {start}
            frontier = [start]
            while frontier and len(self._masks) < max_states:
                state = frontier.pop(0)
                self._mask(state)
                for nxt in np.unique(self.dfa.expand(state)).tolist():
                    if nxt >= 0 and nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
            return len(self._masks)

    def has_mask(self, state: DfaState) -> bool:
        """Whether the mask of `state` is computed already (its next `token_bitmask` is a lookup)."""
        with self._lock:
            return self.dfa.ids.get(state, DEAD) in self._masks

    def token_bitmask(self, state: DfaState) -> np.ndarray:
        """The packed mask of tokens allowed in `state` (end-of-sequence ids included where it accepts)."""
        epoch = self.dfa.stable_epoch()
        mask = self._masks.get(self.dfa.ids.get(state, DEAD))
        if mask is not None and epoch is not None and epoch == self.dfa.epoch:  # the lock-free lookup of a cached mask
            return mask
        with self._lock:
            return self._mask(self._id(state))

    def _mask(self, state: int) -> np.ndarray:
        mask = self._masks.get(state)
        if mask is None:
            with paused_gc():
                token_ids, next_states = allowed_token_ids(self.dfa, state, self.vocabulary.content_tokens)
            self._max_next_distance[state] = int(self.dfa.min_bytes_to_accept[next_states].max()) if len(next_states) else 0
            mask = pack_token_bitmask(token_ids, self.vocabulary.num_words)
            if self.dfa.is_accepting_state[state]:
                mask |= self.vocabulary.eos_bitmask
            mask.setflags(write=False)
            self._masks[state] = mask
            self._extra_bytes += mask.nbytes
            self._account()
        return mask

    def max_next_distance(self, state: DfaState) -> int:
        """The most bytes-to-accept any token allowed in `state` can leave (its mask computed first if need be)."""
        with self._lock:
            state_id = self._id(state)
            if state_id not in self._max_next_distance:
                self._mask(state_id)
            return self._max_next_distance[state_id]

    def token_bitmask_within(self, state: DfaState, max_bytes: int) -> np.ndarray:
        """`token_bitmask(state)` without the tokens after which more than `max_bytes` bytes are needed to accept.

        The budget-aware mask: a token emits at least one byte and every byte is a token, so a state `d` bytes from
        acceptance can always be finished in `d` tokens; keeping `d <= tokens left - 1` after each token means a
        generation always ends complete within its budget. Costs a vocabulary walk the first time (cached). Empty
        where no token fits (the budget is below the shortest completion): the caller decides what then.
        """
        if max_bytes >= self.max_next_distance(state):
            return self.token_bitmask(state)
        with self._lock:
            state_id = self._id(state)
            key = (state_id, max_bytes)
            mask = self._budget_masks.get(key)
            if mask is None:
                with paused_gc():
                    token_ids, next_states = allowed_token_ids(self.dfa, state_id, self.vocabulary.content_tokens)
                keep = token_ids[self.dfa.min_bytes_to_accept[next_states] <= max_bytes]
                mask = pack_token_bitmask(keep, self.vocabulary.num_words)
                if self.dfa.is_accepting_state[state_id]:
                    mask |= self.vocabulary.eos_bitmask
                mask.setflags(write=False)
                self._budget_masks.put(key, mask)
            return mask

    def tokens_through_accepting(self, state: DfaState) -> tuple[np.ndarray, np.ndarray]:
        """Tokens that complete the grammar before their last byte, with that byte position (cached per state)."""
        with self._lock:
            state_id = self._id(state)
            exits = self._exits.get(state_id)
            if exits is None:
                with paused_gc():
                    exits = tokens_through_accepting(self.dfa, state_id, self.vocabulary.content_tokens)
                self._exits[state_id] = exits
                self._extra_bytes += exits[0].nbytes + exits[1].nbytes
                self._account()
            return exits

    def next_state(self, state: DfaState, token_id: int) -> DfaState:
        """The state after a content token, or the dead state (also for special tokens and ids past the tokenizer)."""
        if not 0 <= token_id < self.vocabulary.vocab_size:
            return _DEAD_STATE
        data = self.vocabulary.token_bytes[token_id]
        return self.walk(state, data) if data else _DEAD_STATE

    def walk(self, state: DfaState, data: bytes) -> DfaState:
        """The state after `data` (dead if it leaves the grammar)."""
        return self.walk_each(state, data)[-1] if data else state

    def walk_each(self, state: DfaState, data: bytes) -> list[DfaState]:
        """The state after each byte of `data`, up to the first dead one (for tokens that may cross the end)."""
        known = self.dfa.walk_known(state, data)
        if known is not None:
            return known
        with self._lock:
            current, out = self._id(state), []
            for byte in data:
                current = int(self.dfa.expand(current)[byte])
                out.append(self.dfa.threads_of(current))
                if current == DEAD:
                    break
            return out

    def is_accepting(self, state: DfaState) -> bool:
        return self.dfa.nfa.accept in state

    def is_end_only(self, state: DfaState) -> bool:
        """The state accepts and allows no content token: only end-of-sequence may follow."""
        return self.is_accepting(state) and np.array_equal(self.token_bitmask(state), self.vocabulary.eos_bitmask)

    def forced_bytes(self, state: DfaState) -> bytes:
        with self._lock:
            return self.dfa.forced_bytes(self._id(state))

    def min_bytes_to_accept(self, state: DfaState) -> int:
        with self._lock:
            state_id = self._id(state)  # first: a flush replaces the array
            return int(self.dfa.min_bytes_to_accept[state_id])


class GrammarCompiler:
    """Compiles grammars for one vocabulary and keeps them, failures included, in an LRU cache.

    Args:
        vocabulary: the tokens masks are computed over.
        limits: resource limits.
    """

    def __init__(self, vocabulary: Vocabulary, limits: CompilerLimits | None = None, disk_cache: DiskCache | None = None):
        self.vocabulary = vocabulary
        self.limits = limits or CompilerLimits()
        self.disk_cache = disk_cache
        # Every grammar this compiler makes (and every turn built over them) counts its bytes here.
        self.budget = ByteBudget(self.limits.max_cache_bytes)
        self._cache: LruCache[CompiledGrammar | GrammarError] = LruCache(self.limits.max_cached_grammars)
        self.budget.register(self._cache)
        self.num_disk_hits = 0

    def compile_json_schema(self, schema: dict[str, Any] | bool, *, strict: bool = True, options: SchemaOptions | None = None) -> CompiledGrammar:
        """A grammar for the compact JSON serialization of the schema's instances.

        Raises:
            UnsupportedSchemaError: a keyword cannot be enforced (with strict=True), naming its JSON pointer.
            AutomatonLimitError: the schema needs more automaton states than the limits allow.
        """
        options = options or SchemaOptions()
        key = _json_schema_key(schema, strict, options)

        def build() -> CompiledGrammar:
            result = json_schema_to_regex(schema, strict=strict, options=options)
            grammar = self._from_disk(result.text) or CompiledGrammar(result.text, self.vocabulary, self.limits, budget=self.budget)
            grammar.unenforced = result.unenforced
            return grammar

        return self._cached(key, build)

    def compile_regex(self, regex: str) -> CompiledGrammar:
        """A grammar for the strings `regex` fully matches (our regex syntax, a subset of Python's).

        Raises:
            RegexSyntaxError: the regex uses syntax we do not support.
            AutomatonLimitError: the regex needs more automaton states than the limits allow.
        """
        return self._cached(("regex", regex),
                            lambda: self._from_disk(regex) or CompiledGrammar(regex, self.vocabulary, self.limits, budget=self.budget))

    def cached_json_schema(self, schema: dict[str, Any] | bool, *, strict: bool = True, options: SchemaOptions | None = None) -> CompiledGrammar | None:
        """The grammar if it is compiled already (a lookup: callers skip the compile queue), else None."""
        entry = self._cache.get(_json_schema_key(schema, strict, options or SchemaOptions()))
        return entry if isinstance(entry, CompiledGrammar) else None

    def cached_regex(self, regex: str) -> CompiledGrammar | None:
        entry = self._cache.get(("regex", regex))
        return entry if isinstance(entry, CompiledGrammar) else None

    def _from_disk(self, regex: str) -> CompiledGrammar | None:
        if self.disk_cache is None:
            return None
        grammar = self.disk_cache.load(regex, self.vocabulary, self.limits)
        if grammar is not None:
            self.num_disk_hits += 1
            grammar.attach(self.budget)
        return grammar

    @property
    def num_cache_hits(self) -> int:
        return self._cache.num_hits

    @property
    def num_cache_misses(self) -> int:
        return self._cache.num_misses

    def _cached(self, key: tuple[Any, ...], build: Callable[[], CompiledGrammar]) -> CompiledGrammar:
        entry = self._cache.get(key)
        if entry is None:
            try:
                with paused_gc():
                    entry = build()
            except GrammarError as error:  # the input cannot be compiled: cached like a result (anything else is a bug)
                entry = error
            self._cache.put(key, entry)
        if isinstance(entry, GrammarError):
            raise entry
        return entry


def _json_schema_key(schema: dict[str, Any] | bool, strict: bool, options: SchemaOptions) -> tuple[Any, ...]:
    # Not sort_keys: property order is part of the grammar.
    return ("json_schema", json.dumps(schema, ensure_ascii=False), strict, options)
