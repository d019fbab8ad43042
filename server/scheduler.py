"""Which sequences run in an engine step: admission into KV slots, aborts, prefill chunks and decode rows.

Plain Python (no torch), so it is tested with tables and no model. Each step every decoding sequence gets a
row, and the prefill budget (`prefill_chunk_tokens`) is shared fairly among the sequences still prefilling:
each gets an equal part (at least `min_prefill_share` tokens), so a short prompt that arrives while a long one
prefills starts after one step instead of waiting for the whole long prompt.

Invariant: a sequence is in exactly one of `waiting` or `running` until it finishes; the running ones hold
slots `0..n-1` of the slot table; a step's prefill chunks never exceed the budget (beyond the floor of one
share per prefilling sequence) and never pass a prompt's end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from strictcall.server.kv_slots import CacheMove, SlotTable
from strictcall.server.sequence import Sequence


@dataclass
class Admission:
    """A sequence given a slot, with the prompt tokens found in the prefix cache and the cache moves to make."""

    sequence: Sequence
    slot: int
    num_reused: int
    moves: list[CacheMove]


@dataclass
class StepPlan:
    """What one engine step runs: prompt chunks (sequence, tokens) and decode rows."""

    prefill: list[tuple[Sequence, list[int]]] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)


class Scheduler:
    """Waiting and running sequences over a slot table.

    Args:
        num_slots: KV-cache slots (sequences running at once).
        prefill_chunk_tokens: prompt tokens per step, shared among the sequences prefilling.
        min_prefill_share: the smallest share of a prefilling sequence (so many prompts still make progress).
    """

    def __init__(self, num_slots: int, prefill_chunk_tokens: int, min_prefill_share: int = 16):
        self.slots = SlotTable(num_slots)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.min_prefill_share = min_prefill_share
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def admit(self) -> list[Admission]:
        """Move waiting sequences into free slots, oldest first, reusing the longest cached prompt prefix."""
        admitted = []
        while self.waiting and self.slots.has_free_slot():
            sequence = self.waiting.popleft()
            slot, reused, moves = self.slots.admit(sequence, sequence.request.prompt_ids)
            sequence.num_computed = sequence.num_cached = reused
            self.running.append(sequence)
            admitted.append(Admission(sequence, slot, reused, moves))
        return admitted

    def schedule(self) -> StepPlan:
        """This step's prompt chunks (a fair share of the budget each) and decode rows (in slot order)."""
        plan = StepPlan()
        prefilling = sorted((s for s in self.running if s.is_prefilling), key=self.slot_of)
        if prefilling:
            share = max(self.prefill_chunk_tokens // len(prefilling), self.min_prefill_share)
            for sequence in prefilling:
                start = sequence.num_computed
                plan.prefill.append((sequence, sequence.request.prompt_ids[start : start + share]))
        plan.decode = sorted((s for s in self.running if not s.is_prefilling and not s.finished), key=self.slot_of)
        return plan

    def slot_of(self, sequence: Sequence) -> int:
        return self.slots.slot_of(sequence)

    def take_aborted(self, request_ids: set[str]) -> tuple[list[Sequence], list[Sequence]]:
        """Remove the sequences of these requests: (the running ones, still holding slots; the waiting ones)."""
        running = [s for s in self.running if s.request_id in request_ids]
        waiting = [s for s in self.waiting if s.request_id in request_ids]
        for sequence in waiting:
            self.waiting.remove(sequence)
        return running, waiting

    def release(self, sequence: Sequence) -> list[CacheMove]:
        """A running sequence is done: free its slot (its cache stays for reuse); the moves keep slots contiguous."""
        if sequence not in self.running:
            return []
        self.running.remove(sequence)
        return self.slots.release(sequence)
