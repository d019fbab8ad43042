"""Token masks: for one DFA state, the tokens whose bytes the automaton can consume without dying.

Invariant: a token is in the mask of state `s` exactly when `dfa.walk(s, token_bytes)` is not DEAD (and, since
every live state can still reach acceptance, the token keeps a valid completion possible). The whole
vocabulary is walked at once: one numpy gather per byte position over the tokens still alive, starting from
only the tokens whose first byte is allowed (tokens are sorted by bytes, so those are a few slices).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from strictcall.grammars.automaton import DEAD, LazyDfa

if TYPE_CHECKING:
    from strictcall.grammars.vocabulary import ContentTokens

_MIN_LOOP_BYTES = 8


def allowed_token_ids(dfa: LazyDfa, state: int, tokens: ContentTokens) -> tuple[np.ndarray, np.ndarray]:
    """The content tokens allowed from `state`, and the state each one leads to.

    Returns:
        (token ids, next states), both int arrays of equal length.
    """
    first = dfa.expand(state)
    rows = _rows_with_live_first_byte(first, tokens)
    done_ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    done_states: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    loop_bytes = np.flatnonzero(first == state)
    if len(loop_bytes) >= _MIN_LOOP_BYTES:
        # Inside a string most tokens never leave the state's self-loop: find them with a subset test on
        # each token's set of bytes (4 x 64 bits) instead of walking them (5.2 -> 1.6 ms for a string state,
        # SmolLM2; rerun benchmarks/grammar_engines.py).
        outside = ~_byte_set(loop_bytes)
        loops = ~(tokens.byte_sets[rows] & outside).any(axis=1)
        done_ids.append(tokens.ids[rows[loops]])
        done_states.append(np.full(int(loops.sum()), state, dtype=np.int64))
        rows = rows[~loops]
    for position, alive, current in _walk(dfa, tokens, rows, first):
        finished = tokens.lengths[alive] == position
        done_ids.append(tokens.ids[alive[finished]])
        done_states.append(current[finished])
    return np.concatenate(done_ids), np.concatenate(done_states)


def tokens_through_accepting(dfa: LazyDfa, state: int, tokens: ContentTokens) -> tuple[np.ndarray, np.ndarray]:
    """Tokens that pass through an accepting state before their last byte, and how many bytes that takes.

    These are the tokens that may end one grammar and go on into the next (a call's end and a separator).

    Returns:
        (token ids, byte positions), one entry per (token, position) pair.
    """
    first = dfa.expand(state)
    # A token must be longer than the distance to acceptance to get through it.
    rows = _rows_with_live_first_byte(first, tokens)
    rows = rows[tokens.lengths[rows] > dfa.min_bytes_to_accept[state]]
    found_ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    found_positions: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for position, alive, current in _walk(dfa, tokens, rows, first):
        through = dfa.is_accepting_state[current] & (tokens.lengths[alive] > position)
        found_ids.append(tokens.ids[alive[through]])
        found_positions.append(np.full(int(through.sum()), position, dtype=np.int64))
    return np.concatenate(found_ids), np.concatenate(found_positions)


def _rows_with_live_first_byte(first: np.ndarray, tokens: ContentTokens) -> np.ndarray:
    offsets = tokens.first_byte_offsets
    live = np.flatnonzero(first >= 0).tolist()
    return np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in live] + [np.zeros(0, dtype=np.int64)])


def _walk(dfa: LazyDfa, tokens: ContentTokens, rows: np.ndarray, first: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Walk the tokens `rows` from a state whose row is `first`, one byte position at a time.

    Yields:
        (position, rows, states): the tokens still alive after `position` bytes, and their states.
    """
    current = first[tokens.columns[0][rows]].astype(np.int64)
    alive = current != DEAD
    rows, current = rows[alive], current[alive]
    position = 1
    while len(rows):
        yield position, rows, current
        longer = tokens.lengths[rows] > position
        rows, current = rows[longer], current[longer]
        if not len(rows):
            return
        dfa.expand_all(current)
        # A flat gather (state * 256 + byte) is ~2x faster than 2-D fancy indexing here.
        current = dfa.table.ravel()[current * 256 + tokens.columns[position][rows]]
        alive = current != DEAD
        rows, current = rows[alive], current[alive]
        position += 1


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


def write_bitmask_row(bitmask: Any, index: int, row: np.ndarray) -> None:
    """Copy one packed row into row `index` of a numpy array or a torch tensor (CPU: in place; GPU: async copy)."""
    if isinstance(bitmask, np.ndarray):
        bitmask[index] = row
    elif bitmask.device.type == "cpu":
        bitmask[index].numpy()[:] = row
    else:
        import torch  # only for device tensors: the grammar package itself does not need torch

        bitmask[index].copy_(torch.from_numpy(row.copy()), non_blocking=True)
