"""The one interface every grammar kind's per-request cursor implements (`Matcher`), and the cursor over a
single `CompiledGrammar` (`GrammarMatcher`).

Invariant: the bitmask `fill_next_token_bitmask` writes and the tokens `accept_token` takes always agree: a
token allowed by the mask is accepted, a token outside it is refused and leaves the matcher unchanged.
End-of-sequence tokens are allowed only where the grammar accepts; accepting one terminates the matcher.
The engine (and the vLLM backend) see only `Matcher` and `Grammar`: a turn of tool calls and a single JSON
Schema are driven the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from strictcall.grammars.automaton import DfaState
from strictcall.grammars.errors import GrammarError
from strictcall.grammars.masks import write_bitmask_row

if TYPE_CHECKING:
    from strictcall.grammars.compiler import CompiledGrammar
    from strictcall.grammars.vocabulary import Vocabulary

_TERMINATED: DfaState = frozenset({-1})  # no real state holds a negative thread


class Matcher(Protocol):
    """One generation's position in a grammar."""

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0, max_tokens: int | None = None) -> None:
        """Write the allowed tokens into row `index` of a `(batch, ceil(V/32))` int32 bitmask (numpy or torch).

        With `max_tokens` (the tokens the generation may still emit, this one included), only tokens after which
        the grammar can still be completed in the tokens left: a generation that could end complete always does.
        """

    def next_token_bitmask(self, max_tokens: int | None = None) -> np.ndarray:
        """The current packed mask row (read-only, shared with the grammar's cache); `max_tokens` as above."""

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the grammar does not allow it here."""

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (forced text, tests); one step for `rollback`."""

    def rollback(self, num_steps: int) -> None:
        """Undo the last `num_steps` accepted steps (speculative decoding, jump-forward re-tokenization)."""

    def reset(self) -> None:
        """Back to the start, as if nothing had been accepted."""

    def is_terminated(self) -> bool:
        """An end-of-sequence token was accepted."""

    def is_accepting(self) -> bool:
        """The text so far is complete: end-of-sequence may come now."""

    def is_only_end_allowed(self) -> bool:
        """Complete, and nothing but end-of-sequence may follow: the generation can stop without a model step."""

    def is_complete(self) -> bool:
        """The text so far is a whole answer that may end here, not one cut short: accepting, and not in free text
        (which could always go on). A generation out of tokens here ended complete, not by its budget."""

    def forced_bytes(self) -> bytes:
        """The bytes every continuation must start with (jump-forward); empty where there is a choice."""

    def min_bytes_to_end(self) -> int:
        """Fewest bytes before the grammar may end (a token emits at least one, so also a bound on tokens)."""


class Grammar(Protocol):
    """A compiled grammar of any kind: immutable, shared by requests, each of which gets its own matcher."""

    vocabulary: Vocabulary

    def new_matcher(self) -> Matcher: ...


class GrammarMatcher:
    """Tracks one generation through a `CompiledGrammar` (a `Matcher`).

    Args:
        grammar: the compiled grammar (shared; the matcher holds only its own position).

    Raises:
        GrammarError: the grammar matches no string at all.
    """

    def __init__(self, grammar: CompiledGrammar):
        if not grammar.start_state:
            raise GrammarError(f"grammar {grammar.regex[:80]!r} matches no string at all")
        self.grammar = grammar
        self._eos_ids = frozenset(grammar.vocabulary.eos_token_ids)
        self._states: list[DfaState] = [grammar.start_state]

    @property
    def state(self) -> DfaState:
        """The current DFA state (meaningless once terminated)."""
        return self._states[-1]

    def is_terminated(self) -> bool:
        return self._states[-1] is _TERMINATED

    def is_accepting(self) -> bool:
        return self.is_terminated() or self.grammar.is_accepting(self.state)

    def is_only_end_allowed(self) -> bool:
        return self.is_terminated() or self.grammar.is_end_only(self.state)

    def is_complete(self) -> bool:
        return self.is_accepting()

    def accept_token(self, token_id: int) -> bool:
        if self.is_terminated():
            return False
        if token_id in self._eos_ids:
            if not self.grammar.is_accepting(self.state):
                return False
            self._states.append(_TERMINATED)
            return True
        nxt = self.grammar.next_state(self.state, token_id)
        if not nxt:
            return False
        self._states.append(nxt)
        return True

    def accept_bytes(self, data: bytes) -> bool:
        if self.is_terminated():
            return False
        nxt = self.grammar.walk(self.state, data)
        if not nxt:
            return False
        self._states.append(nxt)
        return True

    def rollback(self, num_steps: int) -> None:
        if not 0 <= num_steps < len(self._states):
            raise ValueError(f"cannot roll back {num_steps} steps: only {len(self._states) - 1} were accepted")
        del self._states[len(self._states) - num_steps :]

    def reset(self) -> None:
        del self._states[1:]

    def next_token_bitmask(self, max_tokens: int | None = None) -> np.ndarray:
        if self.is_terminated():
            return self.grammar.vocabulary.eos_bitmask
        mask = self.grammar.token_bitmask(self.state)
        if max_tokens is not None:
            within = self.grammar.token_bitmask_within(self.state, max(max_tokens - 1, 0))
            mask = within if within.any() else mask  # nothing fits: the budget is below the shortest completion, it ends cut
        return mask

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0, max_tokens: int | None = None) -> None:
        write_bitmask_row(bitmask, index, self.next_token_bitmask(max_tokens))

    def forced_bytes(self) -> bytes:
        return b"" if self.is_terminated() else self.grammar.forced_bytes(self.state)

    def min_bytes_to_end(self) -> int:
        return 0 if self.is_terminated() else self.grammar.min_bytes_to_accept(self.state)
