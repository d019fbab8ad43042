"""A turn's grammar, composed at run time from per-tool grammars, and its matcher.

A tool's whole call (envelope + `{"name": "<name>", "arguments": <schema>}`) is one `CompiledGrammar`,
compiled once per (schema, format, vocabulary) and cached (`tools.py`). A turn (`TurnGrammar`) only names which
grammars may follow which: `prefix call (separator call)* suffix` (the format's literal pieces are grammars of
their own), or in `auto` mode free text (or a response-format answer) that may switch to calls. A
`TurnMatcher` holds the set of live configurations (segment, grammar state); its mask is the bitwise OR of
theirs, so while the tool name is still open every offered tool is live and a name that was not offered is
impossible. A turn is one more grammar kind: `new_matcher()` gives a `Matcher` (`turn_matcher.TurnMatcher`), as
for a single grammar.

Invariant: the mask and `accept_token` agree; end of turn is allowed only after a complete answer or a
complete call sequence. Boundaries are exact: a token may end one segment and go on into the next (`}},`
from a call into Mistral's separator; `>` + `\n{"` from free text through the trigger into a call), so the
model can keep its own tokenization across them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from strictcall.grammars.automaton import DEAD, paused_gc
from strictcall.grammars.cache import ByteBudget, LruCache
from strictcall.grammars.compiler import CompiledGrammar
from strictcall.grammars.formats import ToolCallFormat
from strictcall.grammars.masks import allowed_token_ids, pack_token_bitmask
from strictcall.grammars.turn_matcher import TurnMatcher
from strictcall.grammars.vocabulary import Vocabulary

# Masks kept per turn, one per set of live configurations (6 KB each with a 49,152-token vocabulary).
_MAX_CACHED_MASKS = 4096
# A keyword a non-strict schema has that its grammar does not enforce: (part, tool index, JSON pointer, keyword),
# part "tools" (index: the tool's position) or "answer" (index None).
Unenforced = tuple[str, "int | None", str, str]


class TriggerDfa:
    """The trigger's KMP automaton in the `LazyDfa` interface: state k = the text ends with trigger[:k].

    Completing the trigger is DEAD here: free text cannot contain it (the turn switches to a call instead).
    """

    def __init__(self, trigger: bytes):
        size = len(trigger)
        table = np.zeros((size, 256), dtype=np.int32)
        table[0, trigger[0]] = 1
        fallback = 0
        for j in range(1, size):
            table[j] = table[fallback]
            table[j, trigger[j]] = j + 1
            fallback = int(table[fallback, trigger[j]])
        table[table == size] = DEAD
        self.table = table
        self.trigger = trigger

    def expand(self, state: int) -> np.ndarray:
        return self.table[state]

    def expand_all(self, states: np.ndarray) -> None:
        pass

    def split(self, state: int, data: bytes) -> tuple[int, bytes | None]:
        """Walk `data`: (new state, None) if the trigger does not complete, else (-, bytes after the trigger)."""
        for i, byte in enumerate(data):
            state = int(self.table[state, byte])
            if state == DEAD:
                return DEAD, data[i + 1 :]
        return state, None


class FreeText:
    """Free text that ends where the trigger appears; per trigger state, the tokens that keep it free (shared
    by every turn of a format, so a turn only checks the few tokens that complete the trigger)."""

    def __init__(self, trigger: str, vocabulary: Vocabulary):
        self.dfa = TriggerDfa(trigger.encode("utf-8"))
        self.vocabulary = vocabulary
        self._tokens: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def tokens(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(packed mask of the tokens that keep the text free, ids of the tokens that complete the trigger)."""
        cached = self._tokens.get(state)
        if cached is None:
            free, _ = allowed_token_ids(self.dfa, state, self.vocabulary.content_tokens)  # type: ignore[arg-type]
            completing = np.setdiff1d(self.vocabulary.content_tokens.ids, free)
            cached = (pack_token_bitmask(free, self.vocabulary.num_words), completing)
            with self._lock:
                self._tokens[state] = cached
        return cached


# A configuration: (segment, tool name or "", grammar state, number of calls completed before it).
# Segments: "text" (free text; the state is the trigger automaton's, an int), "prefix", "call", "sep", "suffix"
# (the format's pieces around the calls), "answer" (response_format); their states are `DfaState`s.
Config = tuple[str, str, Any, int]


@dataclass(frozen=True)
class FormatGrammars:
    """What every turn of one format shares: the literal pieces' grammars and free text."""

    format: ToolCallFormat
    prefix: CompiledGrammar | None
    separator: CompiledGrammar | None
    suffix: CompiledGrammar | None
    free_text: FreeText


class TurnGrammar:
    """The grammars one turn may use and how they follow each other (immutable, cached, shared).

    Attributes:
        calls: per tool name, the grammar of its whole call (envelope included).
        max_calls: at most this many calls (None: no limit).
        allow_text: free text is allowed (auto mode without a response_format, or no tools).
        answer: the answer format's grammar, if any.
        unenforced: the keywords of non-strict schemas (tools, answer) that are not enforced.
        distinct_calls: no call may equal an earlier one of the same turn (see `turn_matcher`).
    """

    def __init__(
        self,
        shared: FormatGrammars,
        vocabulary: Vocabulary,
        calls: dict[str, CompiledGrammar],
        max_calls: int | None,
        allow_text: bool,
        answer: CompiledGrammar | None,
        unenforced: tuple[Unenforced, ...] = (),
        budget: ByteBudget | None = None,
        distinct_calls: bool = True,
    ):
        self.format = shared.format
        self.vocabulary = vocabulary
        self.calls = calls
        self.max_calls = max_calls
        self.allow_text = allow_text
        self.answer = answer
        self.unenforced = unenforced
        self.distinct_calls = distinct_calls
        self._shared = shared
        self._pieces = {"prefix": shared.prefix, "sep": shared.separator, "suffix": shared.suffix}
        self._trailing_separator = not self.format.separator.strip()
        self._masks: LruCache[np.ndarray] = LruCache(_MAX_CACHED_MASKS)
        self._budget_masks: LruCache[np.ndarray] = LruCache(256)  # (configs, bytes left) -> mask, for the last tokens
        self._into_call: dict[int, np.ndarray] = {}
        self._tracker = None if budget is None else budget.track(self)

    @property
    def is_unconstrained(self) -> bool:
        """Free text with no calls and no answer format: nothing to mask."""
        return self.allow_text and not self.calls and self.answer is None

    def new_matcher(self) -> TurnMatcher:
        return TurnMatcher(self)

    def grammar_of(self, config: Config) -> CompiledGrammar:
        segment = config[0]
        if segment == "call":
            return self.calls[config[1]]
        if segment == "answer":
            return self.answer  # type: ignore[return-value]
        return self._pieces[segment]  # type: ignore[return-value]

    def _calls_from(self, num_calls: int, lead: str = "prefix") -> set[Config]:
        """Where a call (or the first one, after the prefix) may start."""
        piece = self._pieces[lead]
        if piece is not None:
            return {(lead, "", piece.start_state, num_calls)}
        return {("call", name, g.start_state, num_calls) for name, g in self.calls.items()}

    def start_configs(self) -> frozenset[Config]:
        configs: set[Config] = set()
        if self.allow_text:
            configs.add(("text", "", 0, 0))
        elif self.calls:
            configs |= self._calls_from(0)
        if self.answer is not None:
            configs.add(("answer", "", self.answer.start_state, 0))
        return self.closure(configs)

    def closure(self, configs: set[Config]) -> frozenset[Config]:
        """Add what may start where a segment is complete (until nothing new is added)."""
        out = set(configs)
        pending = list(configs)
        while pending:
            for follow in self._follow(pending.pop()):
                if follow not in out:
                    out.add(follow)
                    pending.append(follow)
        return frozenset(out)

    def _follow(self, config: Config) -> set[Config]:
        segment, _, state, num_calls = config
        if segment in ("text", "answer", "suffix") or not self.grammar_of(config).is_accepting(state):
            return set()
        if segment in ("prefix", "sep"):
            return {("call", name, g.start_state, num_calls) for name, g in self.calls.items()}
        done = num_calls + 1  # a call is complete
        out: set[Config] = set()
        if self._pieces["suffix"] is not None:
            out.add(("suffix", "", self._pieces["suffix"].start_state, done))
        if self.max_calls is None or done < self.max_calls:
            out |= self._calls_from(done, lead="sep")
        return out

    def follow_ons(self, config: Config) -> frozenset[Config]:
        """What may start right after `config` (the next call, a separator, the suffix), if it is complete."""
        return self.closure({config}) - {config}

    def may_end(self, configs: frozenset[Config]) -> bool:
        """End of turn is allowed: free text, or a complete answer, suffix, or call (when there is no suffix).

        A whitespace separator may also end the turn: models write `</tool_call>` and a newline, then stop;
        without this, the newline could only begin another call, and a small model repeats its call until
        `max_tokens` (SmolLM2 on BFCL `required`).
        """
        no_suffix = self._pieces["suffix"] is None
        for config in configs:
            segment, _, state, _ = config
            if segment == "text":
                return True
            ends = segment in ("answer", "suffix") or (no_suffix and (segment == "call" or (segment == "sep" and self._trailing_separator)))
            if ends and self.grammar_of(config).is_accepting(state):
                return True
        return False

    def advance(self, configs: frozenset[Config], data: bytes) -> frozenset[Config]:
        """The live configurations after a token's bytes (empty if the token is not allowed)."""
        out: set[Config] = set()
        for config in configs:
            out |= self._advance_one(config, data)
        return self.closure(out)

    def _advance_one(self, config: Config, data: bytes) -> set[Config]:
        segment, name, state, num_calls = config
        if segment == "text":
            if not self.calls:
                return {config}
            new_state, rest = self._shared.free_text.dfa.split(state, data)
            if rest is None:
                return {("text", "", new_state, 0)}
            # The trigger is complete: the calls take over, from the start of the trigger.
            lead = self._shared.free_text.dfa.trigger + rest
            out: set[Config] = set()
            for start in self.closure(self._calls_from(0)):
                out |= self._advance_one(start, lead)
            return out
        grammar = self.grammar_of(config)
        out = set()
        for i, state in enumerate(grammar.walk_each(config[2], data)):  # noqa: B020 (the last one is used below)
            if not state:
                return out
            if i + 1 < len(data) and grammar.is_accepting(state):
                # The token goes on past the end of this segment into what may follow it.
                for follow in self.follow_ons((segment, name, state, num_calls)):
                    out |= self._advance_one(follow, data[i + 1 :])
        out.add((segment, name, state, num_calls))
        return out

    def token_bitmask(self, configs: frozenset[Config]) -> np.ndarray:
        """The OR of every live configuration's mask, with end-of-turn ids where the turn may end."""
        mask = self._masks.get(configs)
        if mask is not None:
            return mask
        with paused_gc():
            rows = []
            crossing: list[int] = []
            for config in configs:
                if config[0] == "text":
                    rows.append(self._text_bitmask(config[2]))
                    continue
                grammar = self.grammar_of(config)
                rows.append(grammar.token_bitmask(config[2]))
                if self.follow_ons_possible(config):
                    crossing += self._crossing_tokens(config, grammar)
            if crossing:
                rows.append(pack_token_bitmask(np.array(crossing, dtype=np.int64), self.vocabulary.num_words))
            eos = self.vocabulary.eos_bitmask
            mask = np.bitwise_or.reduce(np.stack(rows), axis=0) & ~eos
            if self.may_end(configs):
                mask |= eos
        mask.setflags(write=False)
        self._masks.put(configs, mask, mask.nbytes)
        self._account()
        return mask

    def _account(self) -> None:
        if self._tracker is not None:
            self._tracker.set(self._masks.num_bytes + sum(m.nbytes for m in self._into_call.values()))

    def follow_ons_possible(self, config: Config) -> bool:
        """Whether anything can follow this segment (so tokens may cross its end)."""
        segment = config[0]
        if segment in ("prefix", "sep"):
            return True
        return segment == "call" and (self._pieces["suffix"] is not None or self.max_calls is None or config[3] + 1 < self.max_calls)

    def _crossing_tokens(self, config: Config, grammar: CompiledGrammar) -> list[int]:
        """Tokens that finish this segment and go on into what follows it."""
        segment, name, state, num_calls = config
        token_ids, positions = grammar.tokens_through_accepting(state)
        out = []
        for token_id, position in zip(token_ids.tolist(), positions.tolist()):
            data = self.vocabulary.token_bytes[token_id]
            done = (segment, name, grammar.walk(state, data[:position]), num_calls)
            follow = self.follow_ons(done)
            if follow and self.advance(follow, data[position:]):
                out.append(token_id)
        return out

    def _text_bitmask(self, state: int) -> np.ndarray:
        if not self.calls:
            return self.vocabulary.content_bitmask
        cached = self._into_call.get(state)
        if cached is None:
            free, completing = self._shared.free_text.tokens(state)
            text = frozenset({("text", "", state, 0)})
            into_call = [i for i in completing.tolist() if self.advance(text, self.vocabulary.token_bytes[i])]
            cached = free | pack_token_bitmask(np.array(into_call, dtype=np.int64), self.vocabulary.num_words)
            self._into_call[state] = cached
            self._account()
        return cached

    def forced_bytes(self, configs: frozenset[Config]) -> bytes:
        """The bytes every continuation starts with: the common prefix of the live configurations' forced text."""
        if not configs or self.may_end(configs):
            return b""
        forced = []
        for config in configs:
            if config[0] == "text":
                return b""
            forced.append(self.grammar_of(config).forced_bytes(config[2]))
        common = forced[0]
        for other in forced[1:]:
            n = 0
            while n < min(len(common), len(other)) and common[n] == other[n]:
                n += 1
            common = common[:n]
        return common

    def min_bytes_to_end(self, configs: frozenset[Config]) -> int:
        """Fewest bytes before the turn may end."""
        if any(config[0] == "text" for config in configs):
            return 0
        return min((self.grammar_of(c).min_bytes_to_accept(c[2]) + self._after(c) for c in configs), default=0)

    def _after(self, config: Config) -> int:
        """Fewest bytes from the end of this segment to the end of the turn."""
        segment = config[0]
        suffix = len(self.format.suffix.encode("utf-8"))
        if segment in ("prefix", "sep", "text"):
            return min((g.min_bytes_to_accept(g.start_state) for g in self.calls.values()), default=0) + suffix
        return suffix if segment == "call" else 0

    def token_bitmask_within(self, configs: frozenset[Config], max_bytes: int) -> np.ndarray:
        """`token_bitmask(configs)` without the tokens after which more than `max_bytes` bytes are needed before the
        turn may end (the budget-aware mask; see `CompiledGrammar.token_bitmask_within`)."""
        if max_bytes >= self._max_next_distance(configs):
            return self.token_bitmask(configs)
        key = (configs, max_bytes)
        mask = self._budget_masks.get(key)
        if mask is not None:
            return mask
        with paused_gc():
            rows = [np.zeros(self.vocabulary.num_words, dtype=np.int32)]
            candidates: list[int] = []  # tokens into or across segments: checked by advancing
            for config in configs:
                if config[0] == "text":
                    free, completing = self._shared.free_text.tokens(config[2]) if self.calls else (self.vocabulary.content_bitmask, None)
                    rows.append(free)  # text may end anywhere: within any budget
                    candidates += [] if completing is None else completing.tolist()
                    continue
                grammar, left = self.grammar_of(config), max_bytes - self._after(config)
                if left >= 0:
                    rows.append(grammar.token_bitmask_within(config[2], left))
                if self.follow_ons_possible(config):
                    candidates += self._crossing_tokens(config, grammar)
            kept = [t for t in set(candidates) if (after := self.advance(configs, self.vocabulary.token_bytes[t] or b""))
                    and self.min_bytes_to_end(after) <= max_bytes]
            rows.append(pack_token_bitmask(np.array(kept, dtype=np.int64), self.vocabulary.num_words))
            eos = self.vocabulary.eos_bitmask
            mask = np.bitwise_or.reduce(np.stack(rows), axis=0) & ~eos & self.token_bitmask(configs)
            if self.may_end(configs):
                mask |= eos
            elif not mask.any():
                return self.token_bitmask(configs)  # the budget is below the shortest ending: the turn ends cut
        mask.setflags(write=False)
        self._budget_masks.put(key, mask)
        return mask

    def _max_next_distance(self, configs: frozenset[Config]) -> int:
        """The most bytes-to-end any allowed token can leave (tokens into a following segment leave at most the
        fewest bytes after this segment, which `_after` counts)."""
        return max((self._after(c) if c[0] == "text" else self.grammar_of(c).max_next_distance(c[2]) + self._after(c) for c in configs),
                   default=0)
