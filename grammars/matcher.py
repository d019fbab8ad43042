"""A per-request cursor over a `CompiledGrammar`: fills token bitmasks and accepts tokens.

Invariant: the bitmask `fill_next_token_bitmask` writes and the tokens `accept_token` takes always agree: a
token allowed by the mask is accepted, a token outside it is refused and leaves the matcher unchanged.
End-of-sequence tokens are allowed only where the grammar accepts; accepting one terminates the matcher.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from strictcall.grammars.automaton import DEAD
from strictcall.grammars.compiler import CompiledGrammar
from strictcall.grammars.masks import write_bitmask_row

_TERMINATED = -3


class GrammarMatcher:
    """Tracks one generation through a grammar.

    Args:
        grammar: the compiled grammar (shared; the matcher holds only its own position).
    """

    def __init__(self, grammar: CompiledGrammar):
        if grammar.start_state == DEAD:
            raise ValueError(f"grammar {grammar.regex[:80]!r} matches no string at all")
        self.grammar = grammar
        self._eos_ids = frozenset(grammar.vocabulary.eos_token_ids)
        self._states = [grammar.start_state]

    @property
    def state(self) -> int:
        """The current DFA state (meaningless once terminated)."""
        return self._states[-1]

    def is_terminated(self) -> bool:
        return self._states[-1] == _TERMINATED

    def is_accepting(self) -> bool:
        """Whether the text so far is a complete match (end-of-sequence may come now)."""
        return self.is_terminated() or self.grammar.is_accepting(self.state)

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the grammar does not allow it here."""
        if self.is_terminated():
            return False
        if token_id in self._eos_ids:
            if not self.grammar.is_accepting(self.state):
                return False
            self._states.append(_TERMINATED)
            return True
        nxt = self.grammar.next_state(self.state, token_id)
        if nxt == DEAD:
            return False
        self._states.append(nxt)
        return True

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (forced text, tests); counts as one step for `rollback`."""
        if self.is_terminated():
            return False
        nxt = self.grammar.dfa.walk(self.state, data)
        if nxt == DEAD:
            return False
        self._states.append(nxt)
        return True

    def rollback(self, num_steps: int) -> None:
        """Undo the last `num_steps` accepted tokens (speculative decoding, jump-forward re-tokenization)."""
        if not 0 <= num_steps < len(self._states):
            raise ValueError(f"cannot roll back {num_steps} steps: only {len(self._states) - 1} were accepted")
        del self._states[len(self._states) - num_steps :]

    def reset(self) -> None:
        del self._states[1:]

    def next_token_bitmask(self) -> np.ndarray:
        """The current packed mask row (read-only, shared with the grammar's cache)."""
        if self.is_terminated():
            return self.grammar.eos_bitmask
        return self.grammar.token_bitmask(self.state)

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0) -> None:
        """Write the allowed tokens into row `index` of a `(batch, ceil(V/32))` int32 bitmask.

        Args:
            bitmask: a numpy array or a torch tensor (CPU or GPU) of int32 words.
            index: the batch row to fill.
        """
        write_bitmask_row(bitmask, index, self.next_token_bitmask())

    def forced_bytes(self) -> bytes:
        """The bytes every continuation must start with (jump-forward); empty where there is a choice."""
        return b"" if self.is_terminated() else self.grammar.forced_bytes(self.state)

    def min_bytes_to_accept(self) -> int:
        return 0 if self.is_terminated() else self.grammar.min_bytes_to_accept(self.state)
