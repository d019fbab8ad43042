"""The scheduler and the KV-slot table in plain Python (no model): admission, prefix reuse, fair prefill shares,
decode rows, aborts and releases, as tables of named rows."""

from __future__ import annotations

import pytest

from strictcall.server.kv_slots import CacheMove, SlotTable, common_prefix_length
from strictcall.server.scheduler import Scheduler
from strictcall.server.sequence import EngineRequest, Sequence
from strictcall.server.text_stream import TextStream


def seq(name: str, prompt: list[int]) -> Sequence:
    return Sequence(EngineRequest(name, prompt), lambda event: None, None, None, TextStream(), tokens=list(prompt))


# ----- the slot table -----

# name, cached prefixes of finished sequences [(slot, tokens)], prompt, expected (slot, reused, moves)
ADMIT_CASES = [
    ("empty table", [], [1, 2, 3], (0, 0, [])),
    ("reuse a finished slot in place", [(0, [1, 2, 3, 9])], [1, 2, 3, 4], (0, 3, [])),
    ("bring a finished slot to the front", [(0, [7, 7]), (1, [1, 2, 3])], [1, 2, 3, 4],
     (0, 3, [CacheMove("swap", 1, 0, 3)])),
    ("keep the last prompt token to compute", [(0, [1, 2, 3])], [1, 2, 3], (0, 2, [])),
    ("nothing shared: the least recently used free slot", [(0, [5]), (1, [6])], [1, 2], (0, 0, [])),
]


@pytest.mark.parametrize("name,cached,prompt,expected", ADMIT_CASES, ids=[c[0] for c in ADMIT_CASES])
def test_admission_reuses_the_longest_cached_prefix(name, cached, prompt, expected) -> None:
    table = SlotTable(3)
    for slot, tokens in cached:
        table.cached[slot] = list(tokens)
    slot, reused, moves = table.admit("new", prompt)
    assert (slot, reused, moves) == expected
    assert table.cached[slot] == prompt[:reused] and table.owner[slot] == "new"


def test_a_running_sequence_prefix_is_copied_and_releases_keep_slots_contiguous() -> None:
    table = SlotTable(3)
    table.admit("a", [1, 2, 3, 4])
    table.extend(0, [1, 2, 3, 4])
    slot, reused, moves = table.admit("b", [1, 2, 3, 9])
    assert (slot, reused, moves) == (1, 3, [CacheMove("copy", 0, 1, 3)])
    table.admit("c", [8])
    assert table.release("a") == [CacheMove("swap", 0, 2, 4)]  # the last running slot moves into the hole
    assert table.owner == ["c", "b", None] and table.num_active == 2
    with pytest.raises(RuntimeError):
        full = SlotTable(1)
        full.admit("x", [1])
        full.admit("y", [1])


@pytest.mark.parametrize("a,b,n", [([], [1], 0), ([1, 2], [1, 2], 2), ([1, 2, 3], [1, 9, 3], 1)])
def test_common_prefix_length(a, b, n) -> None:
    assert common_prefix_length(a, b) == n


# ----- the scheduler -----

# name, slots, budget, prompts (length each), expected prefill chunk lengths in the first step
PREFILL_CASES = [
    ("one prompt takes the whole budget", 4, 256, [1000], [256]),
    ("shares are equal", 4, 256, [1000, 1000], [128, 128]),
    ("a short prompt finishes in its share", 4, 256, [3900, 10], [128, 10]),
    ("a floor per prompt", 4, 32, [100, 100, 100, 100], [16, 16, 16, 16]),
    ("waiting beyond the slots", 2, 256, [50, 50, 50], [50, 50]),
]


@pytest.mark.parametrize("name,slots,budget,lengths,chunks", PREFILL_CASES, ids=[c[0] for c in PREFILL_CASES])
def test_prefill_budget_is_shared_fairly(name, slots, budget, lengths, chunks) -> None:
    scheduler = Scheduler(slots, budget)
    for i, n in enumerate(lengths):
        scheduler.add(seq(f"r{i}", [i + 1] * n))
    admitted = scheduler.admit()
    assert [a.sequence.request_id for a in admitted] == [f"r{i}" for i in range(min(slots, len(lengths)))]
    plan = scheduler.schedule()
    assert [len(chunk) for _, chunk in plan.prefill] == chunks and plan.decode == []
    assert len(scheduler.waiting) == max(0, len(lengths) - slots)


def test_a_short_prompt_starts_decoding_while_a_long_one_prefills() -> None:
    scheduler = Scheduler(4, 256)
    long, short = seq("long", [1] * 3900), seq("short", [2] * 10)
    scheduler.add(long)
    scheduler.admit()
    steps_until_short_decodes = 0
    first = True
    for step in range(100):
        if step == 2:
            scheduler.add(short)  # arrives while the long prompt prefills
            scheduler.admit()
        plan = scheduler.schedule()
        for sequence, chunk in plan.prefill:
            sequence.num_computed += len(chunk)
        for sequence in plan.decode:
            sequence.num_computed += 1
            sequence.tokens.append(0)
        if short in plan.decode and first:
            steps_until_short_decodes, first = step - 2, False
    assert steps_until_short_decodes == 1  # one step to prefill its 10 tokens, then a decode row
    assert not long.is_prefilling


def test_decode_rows_are_in_slot_order_and_aborts_release() -> None:
    scheduler = Scheduler(3, 256)
    sequences = [seq(f"r{i}", [i + 1, 5]) for i in range(3)]
    for sequence in sequences:
        scheduler.add(sequence)
    scheduler.admit()
    for sequence in sequences:
        sequence.num_computed = 2
    assert scheduler.schedule().decode == sequences
    scheduler.add(seq("waiting", [9]))
    running, waiting = scheduler.take_aborted({"r0", "waiting"})
    assert running == [sequences[0]] and [s.request_id for s in waiting] == ["waiting"] and not scheduler.waiting
    assert scheduler.release(sequences[0]) == [CacheMove("swap", 0, 2, 0)]  # nothing was cached in this table-only test
    assert scheduler.schedule().decode == [sequences[2], sequences[1]]  # r2 took slot 0
    assert scheduler.release(sequences[0]) == []  # already released
