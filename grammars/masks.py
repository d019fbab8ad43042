"""Token masks: for one DFA state, the tokens whose bytes the automaton can consume without dying.

Invariant: a token is in the mask of state `s` exactly when `dfa.walk(s, token_bytes)` is not DEAD (and, since
every live state can still reach acceptance, the token keeps a valid completion possible). The whole
vocabulary is walked at once: one numpy gather per byte position over the tokens still alive, starting from
only the tokens whose first byte is allowed (tokens are sorted by bytes, so those are a few slices).
"""

from __future__ import annotations

import numpy as np

from strictcall.grammars.automaton import DEAD, LazyDfa
from strictcall.grammars.vocabulary import ContentTokens

_MIN_LOOP_BYTES = 8


def allowed_token_ids(dfa: LazyDfa, state: int, tokens: ContentTokens) -> tuple[np.ndarray, np.ndarray]:
    """The content tokens allowed from `state`, and the state each one leads to.

    Returns:
        (token ids, next states), both int arrays of equal length.
    """
    first = dfa.expand(state)
    live_bytes = np.flatnonzero(first >= 0)
    if len(live_bytes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    offsets = tokens.first_byte_offsets
    rows = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in live_bytes.tolist()])
    done_ids: list[np.ndarray] = []
    done_states: list[np.ndarray] = []
    loop_bytes = np.flatnonzero(first == state)
    if len(loop_bytes) >= _MIN_LOOP_BYTES:
        # Inside a string most tokens never leave the state's self-loop: find them with a subset test on
        # each token's set of bytes (4 x 64 bits) instead of walking them (5.2 -> 1.1 ms for a string state,
        # SmolLM2; rerun benchmarks/grammar_engines.py).
        outside = ~_byte_set(loop_bytes)
        loops = ~(tokens.byte_sets[rows] & outside).any(axis=1)
        done_ids.append(tokens.ids[rows[loops]])
        done_states.append(np.full(int(loops.sum()), state, dtype=np.int64))
        rows = rows[~loops]
    current = first[tokens.columns[0][rows]].astype(np.int64)
    position = 1
    while len(rows):
        finished = tokens.lengths[rows] == position
        if finished.any():
            done_ids.append(tokens.ids[rows[finished]])
            done_states.append(current[finished])
            rows, current = rows[~finished], current[~finished]
            if not len(rows):
                break
        dfa.expand_all(current)
        # A flat gather (state * 256 + byte) is ~2x faster than 2-D fancy indexing here.
        current = dfa.table.ravel()[current * 256 + tokens.columns[position][rows]]
        alive = current != DEAD
        if not alive.all():
            rows, current = rows[alive], current[alive]
        position += 1
    return np.concatenate(done_ids), np.concatenate(done_states)


def _byte_set(byte_values: np.ndarray) -> np.ndarray:
    bits = np.zeros(256, dtype=bool)
    bits[byte_values] = True
    return np.packbits(bits, bitorder="little").view("<u8")


def pack_token_bitmask(token_ids: np.ndarray, num_words: int) -> np.ndarray:
    """Token ids -> one bitmask row: int32 words, bit `t % 32` of word `t // 32` set for each allowed id."""
    bits = np.zeros(num_words * 32, dtype=bool)
    bits[token_ids] = True
    return np.packbits(bits, bitorder="little").view("<i4").astype(np.int32, copy=False)


def unpack_token_bitmask(row: np.ndarray, vocab_size: int) -> np.ndarray:
    """One bitmask row -> the allowed token ids (for tests and debugging)."""
    bits = np.unpackbits(np.ascontiguousarray(row, dtype="<i4").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size])
