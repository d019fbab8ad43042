"""KV-cache slots: which sequence holds each, and prefix reuse from running and finished sequences.

Invariant: the running sequences hold slots `0..n-1` (so a batched forward reads the cache through a view),
and `cached[s]` is always the token prefix whose keys and values slot `s` holds. A finished sequence's slot
keeps its tokens until it is reused, so an agent's next turn (same long system prompt and tools) skips
their prefill. The table only plans; the engine performs the cache moves it returns on the model runner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheMove:
    """A KV-cache operation on the first `length` positions: "swap" slots a and b, or "copy" a into b."""

    kind: str
    a: int
    b: int
    length: int


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SlotTable:
    """Assigns slots to sequences (keyed by any hashable id) and plans prefix reuse."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.owner: list[object | None] = [None] * num_slots
        self.cached: list[list[int]] = [[] for _ in range(num_slots)]
        self._last_used = [0] * num_slots
        self._clock = 0

    @property
    def num_active(self) -> int:
        return sum(owner is not None for owner in self.owner)

    def has_free_slot(self) -> bool:
        return self.num_active < self.num_slots

    def slot_of(self, owner: object) -> int:
        return self.owner.index(owner)

    def admit(self, owner: object, prompt: list[int]) -> tuple[int, int, list[CacheMove]]:
        """Give `owner` the next slot, reusing the longest cached prefix of `prompt` found anywhere.

        Returns:
            (slot, number of prompt tokens already cached there, cache moves to perform first).
        """
        if not self.has_free_slot():
            raise RuntimeError("no free KV-cache slot")
        target = self.num_active
        lengths = [common_prefix_length(cached, prompt) for cached in self.cached]
        best = max(lengths)
        if best:  # the longest reusable prefix; a finished slot before a running one on ties
            best_slot = max(range(self.num_slots), key=lambda s: (lengths[s], self.owner[s] is None))
        else:  # nothing to reuse: take the least recently used free slot, to keep recent caches longest
            best_slot = min((s for s in range(self.num_slots) if self.owner[s] is None), key=lambda s: self._last_used[s])
        # Keep at least the last prompt token to compute: its logits start the generation.
        reuse = min(best, len(prompt) - 1)
        moves: list[CacheMove] = []
        if self.owner[best_slot] is not None:  # a running sequence: copy its prefix
            if reuse:
                moves.append(CacheMove("copy", best_slot, target, reuse))
        elif best_slot != target:  # a finished one: bring its slot (and its cache) to the target position
            moves.append(CacheMove("swap", best_slot, target, max(len(self.cached[best_slot]), len(self.cached[target]))))
            self.cached[best_slot], self.cached[target] = self.cached[target], self.cached[best_slot]
        self.owner[target] = owner
        self.cached[target] = prompt[:reuse]
        self._touch(target)
        return target, reuse, moves

    def extend(self, slot: int, tokens: list[int]) -> None:
        """Record that `tokens` were appended to the slot's cache."""
        self.cached[slot].extend(tokens)

    def release(self, owner: object) -> list[CacheMove]:
        """Free the owner's slot (its cache stays for reuse) and keep the running slots contiguous."""
        slot = self.slot_of(owner)
        self.owner[slot] = None
        self._touch(slot)
        last = self.num_active  # the highest running slot, if above the freed one
        if last > slot and self.owner[last] is not None:
            length = max(len(self.cached[slot]), len(self.cached[last]))
            self.owner[slot], self.owner[last] = self.owner[last], None
            self.cached[slot], self.cached[last] = self.cached[last], self.cached[slot]
            self._last_used[slot], self._last_used[last] = self._last_used[last], self._last_used[slot]
            return [CacheMove("swap", slot, last, length)]
        return []

    def _touch(self, slot: int) -> None:
        self._clock += 1
        self._last_used[slot] = self._clock
