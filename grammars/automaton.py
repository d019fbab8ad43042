"""Grammar AST -> byte-level NFA (Thompson) with calls between rules -> DFA whose states are made on demand.

A grammar is a main pattern and named rules that may refer to each other and to themselves (`RuleRef`, a JSON
Schema `$ref`). Each rule's NFA is built once, however many places call it; a call edge enters the rule and
returns to the caller. The NFA is then a pushdown automaton, simulated by threads: a thread is an NFA state and a
stack of return states (interned, so a thread is one int). A DFA state is a set of threads; for a grammar without
rules every stack is empty and a thread is just an NFA state.

Invariant: the DFA accepts exactly the UTF-8 encodings of the strings the grammar matches with at most
`MAX_FRAME_DEPTH` rule calls open at once, and every live DFA state can still reach acceptance within that
depth (threads that cannot are pruned), so a byte that keeps a state alive never leads into a dead end.
Compiling builds only the NFA (linear in the grammar); a DFA state's row of 256 transitions is computed the first
time a walk reaches it, then kept in a dense numpy table that vectorized token walks index directly. The table
is a cache, never a limit: past `max_states` states, `flush_if_full` forgets them all (as RE2 does) and they are
made again as walks reach them, so a grammar whose DFA would be huge (`[a-z]*a[a-z]{40}`) is slower, never
refused in the middle of a generation. Callers outside a single operation hold a state as its set of threads
(`DfaState`), which stays valid across flushes; ids are valid until the next flush.
"""

from __future__ import annotations

import gc
import heapq
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from strictcall.grammars.cancel import check_cancelled
from strictcall.grammars.errors import AutomatonLimitError
from strictcall.grammars.regex import Alternation, CharClass, Concat, Node, Repeat, RuleRef

DEAD = -1
UNEXPANDED = -2
DEFAULT_MAX_NFA_STATES = 2_000_000
# Counted repeats with more copies than this are unrolled lazily (see `Nfa`).
_EAGER_COPIES = 16
# States kept before a flush: 50,000 x 256 x 4 bytes = 51 MB of transition table per grammar (counted repeats,
# e.g. maxItems x maxLength, need one state per position reached; JSONSchemaBench Github_easy/o9925 passed 20,000).
DEFAULT_MAX_DFA_STATES = 50_000
_MAX_FORCED_BYTES = 4096
# Most rule calls open at once (a JSON Schema `$ref` nesting depth): far above what a recursive schema's instances
# need in practice, and low enough that a thread's stack stays cheap. Deeper instances are not generated.
MAX_FRAME_DEPTH = 64
# A thread is `stack id << _STACK_SHIFT | NFA state`.
_STACK_SHIFT = 32
_STATE_MASK = (1 << _STACK_SHIFT) - 1
# A DFA state as its set of threads; the empty set is the dead state.
DfaState = frozenset[int]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while compiling.

    Compiling allocates many small objects that all stay alive; each allocation burst makes the collector scan
    the whole heap (torch and transformers hold ~350k objects) for nothing: 4-6x slower compiles
    (benchmarks/tool_grammars.py, 100 tools cold: 1.0-1.8 s -> 0.3 s). Reference counting still frees memory.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@lru_cache(maxsize=4096)
def utf8_sequences(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Code point ranges -> byte-range sequences whose concatenations are exactly their UTF-8 encodings.

    Surrogates (U+D800..U+DFFF) have no UTF-8 encoding and are left out.
    """
    out: list[tuple[tuple[int, int], ...]] = []
    for lo, hi in ranges:
        for start, end in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)):
            for bound in (0x7F, 0x7FF, 0xFFFF, 0x10FFFF):
                # Split at the boundaries between encoding lengths: each piece has one length.
                floor = {0x7F: 0, 0x7FF: 0x80, 0xFFFF: 0x800, 0x10FFFF: 0x10000}[bound]
                a, b = max(start, floor), min(end, bound)
                if a <= b:
                    _split_same_length(a, b, out)
    return tuple(out)


def _split_same_length(a: int, b: int, out: list[tuple[tuple[int, int], ...]]) -> None:
    length = len(chr(a).encode("utf-8"))
    for i in range(1, length):
        mask = (1 << (6 * i)) - 1
        if a & ~mask != b & ~mask:
            if a & mask:
                _split_same_length(a, a | mask, out)
                _split_same_length((a | mask) + 1, b, out)
                return
            if b & mask != mask:
                _split_same_length(a, (b & ~mask) - 1, out)
                _split_same_length(b & ~mask, b, out)
                return
    out.append(tuple(zip(chr(a).encode("utf-8"), chr(b).encode("utf-8"))))


Cost = tuple[float, int]
_NO_STRING: Cost = (math.inf, 0)


def min_cost(node: Node, rule_costs: Mapping[str, Cost] | None = None) -> Cost:
    """(fewest UTF-8 bytes a string matching `node` can have, rule calls that shortest string nests), the least in
    that order; (inf, 0) for a node that matches nothing. `rule_costs` gives each rule's own (see `rule_costs`)."""
    memo: dict[int, Cost] = {}
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        item, children_done = stack.pop()
        if id(item) in memo:
            continue
        children = _children(item)
        if children and not children_done:
            stack.append((item, True))
            stack.extend((child, False) for child in children if id(child) not in memo)
            continue
        if isinstance(item, CharClass):
            memo[id(item)] = (len(chr(item.ranges[0][0]).encode("utf-8")), 0) if item.ranges else _NO_STRING
        elif isinstance(item, RuleRef):
            length, height = (rule_costs or {}).get(item.name, _NO_STRING)
            memo[id(item)] = (length, height + 1) if length != math.inf else _NO_STRING
        elif isinstance(item, Concat):
            parts = [memo[id(c)] for c in item.parts]
            length = sum(part[0] for part in parts)
            memo[id(item)] = (length, max((part[1] for part in parts), default=0)) if length != math.inf else _NO_STRING
        elif isinstance(item, Alternation):
            memo[id(item)] = min((memo[id(c)] for c in item.options), default=_NO_STRING)
        else:
            inner = memo[id(item.node)]
            memo[id(item)] = (0, 0) if item.min_count == 0 else \
                (item.min_count * inner[0], inner[1]) if inner[0] != math.inf else _NO_STRING
    return memo[id(node)]


# The last grammars' rule costs, by rule names, with the rule ASTs they were computed for (compared by identity:
# parsed rules are cached, so a schema's check and its NFA share them).
_RULE_COSTS: dict[tuple[str, ...], tuple[tuple[Node, ...], dict[str, Cost]]] = {}
_RULE_COSTS_LOCK = threading.Lock()


def rule_costs(rules: Mapping[str, Node]) -> dict[str, Cost]:
    """Each rule's `min_cost`, rules calling rules included: the least fixpoint, found by iterating from "no
    string" (costs only fall, so it stops); after the first round only the callers of a rule whose cost fell are
    computed again."""
    key, nodes = tuple(rules), tuple(rules.values())
    cached = _RULE_COSTS.get(key)
    if cached is not None and all(a is b for a, b in zip(cached[0], nodes)):
        return dict(cached[1])
    costs = _rule_costs(rules)
    with _RULE_COSTS_LOCK:  # compile threads share the cache
        if len(_RULE_COSTS) >= 64:
            _RULE_COSTS.pop(next(iter(_RULE_COSTS)))
        _RULE_COSTS[key] = (nodes, costs)
    return dict(costs)


def _rule_costs(rules: Mapping[str, Node]) -> dict[str, Cost]:
    costs: dict[str, Cost] = {name: _NO_STRING for name in rules}
    callers: dict[str, set[str]] = {name: set() for name in rules}
    for name, node in rules.items():
        stack: list[Node] = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, RuleRef):
                callers[item.name].add(name)
            else:
                stack.extend(_children(item))
    pending = list(rules)
    while pending:
        check_cancelled()
        changed: set[str] = set()
        for name in pending:
            cost = min_cost(rules[name], costs)
            if cost < costs[name]:
                costs[name] = cost
                changed |= callers[name]
        pending = [name for name in rules if name in changed]
    return costs


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Concat):
        return node.parts
    if isinstance(node, Alternation):
        return node.options
    if isinstance(node, Repeat):
        return (node.node,)
    return ()


class Nfa:
    """A Thompson NFA over bytes: byte-range edges, epsilon edges and call edges; one start and one accept state
    for the main pattern and one pair per rule (`calls[s]`: (the callee's start, the state to return to)).

    Long counted repeats (`x{0,32767}`, a string's maxLength) are unrolled lazily: the states of copy k+1 are
    built when a DFA state first reaches copy k, so a bound costs only the copies a generation visits
    (a 32767-character maxLength: 9.3 s and 1.4M states eagerly; now a few ms).
    """

    def __init__(self, node: Node, max_states: int = DEFAULT_MAX_NFA_STATES, rules: Mapping[str, Node] | None = None):
        self.max_states = max_states
        self.byte_edges: list[list[tuple[int, int, int]]] = []
        self.epsilons: list[list[int]] = []
        self.calls: dict[int, list[tuple[int, int]]] = {}
        # Per state: fewest bytes to the end of its rule (-1: unreachable), and the rule calls that shortest way nests.
        self.distance: list[float] = []
        self.height: list[int] = []
        # Stub state -> (the rest of a long repeat, to be built from the stub to `end`, its min cost, end).
        self.pending: dict[int, tuple[Repeat, Cost, int]] = {}
        self._compiled = False
        rules = rules or {}
        self.rule_costs = rule_costs(rules)
        with paused_gc():
            self.start = self._new_state()
            self.accept = self._new_state()
            self.rule_starts = {name: self._new_state() for name in rules}
            # A thread at a rule's accept state returns to its caller.
            self.returns = frozenset(self._new_state() for _ in rules)
            # A rule is built when a walk first calls it (its start is a stub until then, its costs known from the
            # ASTs): the first mask needs only the rules the first bytes reach.
            self.pending_rules: dict[int, tuple[Node, int]] = {}
            for (name, body), accept in zip(rules.items(), sorted(self.returns)):
                start = self.rule_starts[name]
                self.pending_rules[start] = (body, accept)
                self.distance[accept] = 0
                length, height = self.rule_costs[name]
                if length != math.inf:
                    self.distance[start], self.height[start] = length, height
            self._build(node, self.start, self.accept)
            stubs = set(self.pending_rules) | self.returns
            self._settle_distances([state for state in range(len(self.epsilons)) if state not in stubs])
        self._compiled = True

    def _new_state(self) -> int:
        if not len(self.epsilons) & 1023:
            check_cancelled()
        # The limit is the compile's: a copy of a lazy repeat, built while generating, is one the generation
        # reached (at most the repeat's own bound of them), and a limit must never be met mid-generation.
        if len(self.epsilons) >= self.max_states and not self._compiled:
            raise AutomatonLimitError(f"the regex needs more than {self.max_states} NFA states; simplify the schema")
        self.byte_edges.append([])
        self.epsilons.append([])
        self.distance.append(-1)
        self.height.append(0)
        return len(self.epsilons) - 1

    def _build(self, node: Node, start: int, end: int) -> None:
        # An explicit stack instead of recursion: deeply nested schemas give deeply nested regexes.
        stack: list[tuple[Node, int, int]] = [(node, start, end)]
        while stack:
            node, start, end = stack.pop()
            if isinstance(node, CharClass):
                self._add_char_class(node, start, end)
            elif isinstance(node, Concat):
                if not node.parts:
                    self.epsilons[start].append(end)
                    continue
                points = [start] + [self._new_state() for _ in node.parts[1:]] + [end]
                stack.extend((part, points[i], points[i + 1]) for i, part in enumerate(node.parts))
            elif isinstance(node, Alternation):
                for option in node.options:
                    stack.append((option, start, end))
            elif isinstance(node, Repeat):
                self._add_repeat(node, start, end, stack)
            elif isinstance(node, RuleRef):
                self.calls.setdefault(start, []).append((self.rule_starts[node.name], end))
            else:
                raise TypeError(f"not a regex node: {node!r}")

    def _add_char_class(self, node: CharClass, start: int, end: int) -> None:
        for sequence in utf8_sequences(node.ranges):
            state = start
            for i, (lo, hi) in enumerate(sequence):
                target = end if i == len(sequence) - 1 else self._new_state()
                self.byte_edges[state].append((lo, hi, target))
                state = target

    def _add_repeat(self, node: Repeat, start: int, end: int, stack: list[tuple[Node, int, int]]) -> None:
        copies = node.min_count if node.max_count is None else node.max_count
        if copies > _EAGER_COPIES:
            # One copy now; the rest when a walk gets there (`materialize`).
            state = self._new_state()
            stack.append((node.node, start, state))
            if node.min_count == 0:
                self.epsilons[start].append(end)
            rest = Repeat(node.node, max(node.min_count - 1, 0), None if node.max_count is None else node.max_count - 1)
            self.pending[state] = (rest, min_cost(rest, self.rule_costs), end)
            return
        state = start
        for _ in range(node.min_count):
            nxt = self._new_state()
            stack.append((node.node, state, nxt))
            state = nxt
        if node.max_count is None:
            # A loop through a fresh state, so the loop's epsilons do not leak into `state`'s other edges.
            loop = self._new_state()
            self.epsilons[state].append(loop)
            body_end = self._new_state()
            stack.append((node.node, loop, body_end))
            self.epsilons[body_end].append(loop)
            self.epsilons[loop].append(end)
            return
        for _ in range(node.max_count - node.min_count):
            nxt = self._new_state()
            self.epsilons[state].append(end)
            stack.append((node.node, state, nxt))
            state = nxt
        self.epsilons[state].append(end)

    def materialize(self, stub: int) -> None:
        """Build a rule called for the first time, or the next copy of a lazily unrolled repeat, at `stub` (no-op
        for other states)."""
        rule = self.pending_rules.pop(stub, None)
        if rule is not None:
            first_new = len(self.epsilons)
            with paused_gc():
                self._build(rule[0], stub, rule[1])
                self._settle_distances(range(first_new, len(self.epsilons)))
        pending = self.pending.pop(stub, None)
        if pending is None:
            return
        rest, _, end = pending
        first_new = len(self.epsilons)
        with paused_gc():
            stack: list[tuple[Node, int, int]] = []
            self._add_repeat(rest, stub, end, stack)
            while stack:
                item, a, b = stack.pop()
                self._build(item, a, b)
            self._settle_distances(range(first_new, len(self.epsilons)))

    def _out_edges(self, state: int) -> list[tuple[int, float, int]]:
        """(target, bytes, rule calls nested) per edge: a call costs its rule's shortest string, one level deeper."""
        edges: list[tuple[int, float, int]] = [(t, 0, 0) for t in self.epsilons[state]]
        edges += [(t, 1, 0) for _, _, t in self.byte_edges[state]]
        if state in self.pending:
            _, (length, height), end = self.pending[state]
            if length != math.inf:
                edges.append((end, length, height))
        for callee, end in self.calls.get(state, ()):
            if self.distance[callee] >= 0:  # a rule's start holds its cost from the ASTs, before it is built
                edges.append((end, self.distance[callee], self.height[callee] + 1))
        return edges

    def _settle_distances(self, states: range | list[int]) -> None:
        """Fewest bytes to the end of the rule (Dijkstra backwards, ties broken by fewer nested calls) for
        `states`, whose edges lead among themselves or to states already settled; -1 where the end is unreachable.
        A call edge costs its rule's `rule_costs`, known before any NFA state is."""
        inside = set(states)
        reverse: dict[int, list[tuple[int, float, int]]] = {}
        heap: list[tuple[float, int, int]] = []
        ends = self.returns | {self.accept}
        for state in states:
            if not state & 4095:
                check_cancelled()
            if state in ends:
                heap.append((0, 0, state))
            for target, cost, height in self._out_edges(state):
                if target in inside:
                    reverse.setdefault(target, []).append((state, cost, height))
                elif self.distance[target] >= 0:
                    heap.append((self.distance[target] + cost, max(height, self.height[target]), state))
        heapq.heapify(heap)
        settled: dict[int, tuple[float, int]] = {}
        while heap:
            distance, height, state = heapq.heappop(heap)
            if state in settled:
                continue
            settled[state] = (distance, height)
            if not len(settled) & 4095:
                check_cancelled()
            for source, cost, nested in reverse.get(state, ()):
                if source not in settled:
                    heapq.heappush(heap, (distance + cost, max(nested, height), source))
        for state in states:
            self.distance[state], self.height[state] = settled.get(state, (-1, 0))


class LazyDfa:
    """The subset construction of an `Nfa`, one state at a time.

    A DFA state is the set of threads (NFA state, stack of return states) that have byte edges (or accept)
    reachable by epsilons, calls and returns, restricted to those that can still reach acceptance within
    `max_depth` open calls. `table[s, b]` is the next state, `DEAD`, or (for a row not yet computed)
    `UNEXPANDED`. Thread-safe: expansion holds a lock; a flush must not run while another thread uses ids
    (`CompiledGrammar` holds its lock around both). The stacks are never flushed (threads name them).
    """

    def __init__(self, nfa: Nfa, max_states: int = DEFAULT_MAX_DFA_STATES, max_depth: int = MAX_FRAME_DEPTH):
        self.nfa = nfa
        self.max_states = max_states
        self.max_depth = max_depth
        # Stack id -> (return state, parent stack id, depth, bytes the return states need at least); 0 is empty.
        self._stacks: list[tuple[int, int, int, float]] = [(-1, 0, 0, 0)]
        self._stack_ids: dict[tuple[int, int], int] = {}
        self._lock = threading.RLock()
        # Odd while a flush is under way (a sequence lock): lock-free readers start on an even value and check that
        # it did not change.
        self.epoch = 0
        self._reset()
        self.start_threads: DfaState = self._closure_of([nfa.start]) if nfa.distance[nfa.start] >= 0 else frozenset()
        self.start = self.intern(self.start_threads)

    def _reset(self) -> None:
        self._closures: dict[int, frozenset[int]] = {}
        self.ids: dict[frozenset[int], int] = {}  # read lock-free under `epoch`
        self._sets: list[frozenset[int]] = []
        self.table = np.full((16, 256), UNEXPANDED, dtype=np.int32)
        self.is_accepting_state = np.zeros(16, dtype=bool)
        self.min_bytes_to_accept = np.zeros(16, dtype=np.int64)
        self._forced: dict[int, bytes] = {}

    @property
    def num_flushes(self) -> int:
        return self.epoch // 2

    def flush_if_full(self, forget: Callable[[], None]) -> None:
        """Forget every state if there are more than `max_states`, and with them what `forget` drops (the caller's
        caches by id): ids change, `DfaState`s stay valid."""
        with self._lock:
            if len(self._sets) <= self.max_states:
                return
            self.epoch += 1
            self._reset()
            forget()
            self.start = self.intern(self.start_threads)
            self.epoch += 1

    def stable_epoch(self) -> int | None:
        """The epoch for a lock-free read (None while a flush is under way)."""
        epoch = self.epoch
        return None if epoch & 1 else epoch

    def intern(self, threads: DfaState) -> int:
        """The id of the state with these threads (DEAD for none)."""
        return self._state_id(threads) if threads else DEAD

    def walk_known(self, threads: DfaState, data: bytes) -> list[DfaState] | None:
        """The state after each byte of `data` (up to the first dead one) if every row on the way is computed
        already, else None; no lock, no new state (the per-token fast path: a flush meanwhile gives None)."""
        epoch = self.stable_epoch()
        current = self.ids.get(threads)
        if current is None or epoch is None:
            return None
        table, sets = self.table, self._sets  # read after the id: the table is grown before an id is published
        out = []
        for byte in data:
            current = table[current, byte]
            if current == UNEXPANDED:
                return None
            out.append(sets[current] if current >= 0 else frozenset())
            if current < 0:
                break
        return out if epoch == self.epoch else None

    def threads_of(self, state: int) -> DfaState:
        """The threads of state `state` (none for DEAD)."""
        return self._sets[state] if state >= 0 else frozenset()

    @property
    def num_states(self) -> int:
        return len(self._sets)

    def __getstate__(self) -> dict:
        # For the disk cache: the lock is not picklable and the closures are cheap to recompute.
        state = self.__dict__.copy()
        del state["_lock"], state["_closures"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._closures = {}

    def _closure(self, thread: int) -> frozenset[int]:
        cached = self._closures.get(thread)
        if cached is not None:
            return cached
        seen = {thread}
        pending = [thread]
        keep = []
        nfa, stacks, max_depth = self.nfa, self._stacks, self.max_depth
        while pending:
            current = pending.pop()
            state, frames = current & _STATE_MASK, current >> _STACK_SHIFT
            nfa.materialize(state)
            if nfa.distance[state] < 0:
                continue
            return_state, parent, depth, _ = stacks[frames]
            if depth + nfa.height[state] > max_depth:
                continue  # its shortest way out nests deeper than allowed
            if nfa.byte_edges[state] or state == nfa.accept:
                keep.append(current)
            base = frames << _STACK_SHIFT
            targets = [base | target for target in nfa.epsilons[state]]
            for callee, after in nfa.calls.get(state, ()):
                if nfa.distance[after] >= 0 and depth + nfa.height[after] <= max_depth and \
                        depth + 1 + nfa.height[callee] <= max_depth:
                    targets.append(self._push(frames, after) << _STACK_SHIFT | callee)
            if frames and state in nfa.returns:
                targets.append(parent << _STACK_SHIFT | return_state)
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    pending.append(target)
        closure = frozenset(keep)
        self._closures[thread] = closure
        return closure

    def _push(self, frames: int, return_state: int) -> int:
        """The stack id of `frames` with `return_state` on top."""
        key = (return_state, frames)
        stack_id = self._stack_ids.get(key)
        if stack_id is None:
            _, _, depth, needed = self._stacks[frames]
            stack_id = len(self._stacks)
            self._stacks.append((return_state, frames, depth + 1, needed + self.nfa.distance[return_state]))
            self._stack_ids[key] = stack_id
        return stack_id

    def _closure_of(self, states: list[int]) -> frozenset[int]:
        if len(states) == 1:
            return self._closure(states[0])
        result: set[int] = set()
        for state in states:
            result |= self._closure(state)
        return frozenset(result)

    def _state_id(self, nfa_states: frozenset[int]) -> int:
        state_id = self.ids.get(nfa_states)
        if state_id is not None:
            return state_id
        state_id = len(self._sets)
        check_cancelled()
        if state_id >= len(self.table):
            self._grow()
        self.ids[nfa_states] = state_id
        self._sets.append(nfa_states)
        self.is_accepting_state[state_id] = self.nfa.accept in nfa_states
        distance, stacks = self.nfa.distance, self._stacks
        self.min_bytes_to_accept[state_id] = int(min(distance[t & _STATE_MASK] + stacks[t >> _STACK_SHIFT][3] for t in nfa_states))
        return state_id

    def _grow(self) -> None:
        size = len(self.table) * 2
        table = np.full((size, 256), UNEXPANDED, dtype=np.int32)
        table[: len(self.table)] = self.table
        accepting = np.zeros(size, dtype=bool)
        accepting[: len(self.is_accepting_state)] = self.is_accepting_state
        min_bytes = np.zeros(size, dtype=np.int64)
        min_bytes[: len(self.min_bytes_to_accept)] = self.min_bytes_to_accept
        # Readers index `self.table` without the lock; each attribute is swapped whole, old rows stay valid.
        self.table, self.is_accepting_state, self.min_bytes_to_accept = table, accepting, min_bytes

    def expand(self, state: int) -> np.ndarray:
        """The state's 256 transitions, computed on first use."""
        row = self.table[state]
        if row[0] != UNEXPANDED:
            return row
        with self._lock:
            if self.table[state, 0] != UNEXPANDED:
                return self.table[state]
            byte_edges = self.nfa.byte_edges
            edges = [(lo, hi, thread & ~_STATE_MASK | target) for thread in self._sets[state]
                     for lo, hi, target in byte_edges[thread & _STATE_MASK]]
            points = sorted({lo for lo, _, _ in edges} | {hi + 1 for _, hi, _ in edges} | {0, 256})
            targets: list[list[int]] = [[] for _ in points]
            for lo, hi, target in edges:
                for i in range(bisect_left(points, lo), bisect_left(points, hi + 1)):
                    targets[i].append(target)
            new_row = np.full(256, DEAD, dtype=np.int32)
            for i in range(len(points) - 1):
                if targets[i]:
                    closure = self._closure_of(targets[i])
                    if closure:
                        new_row[points[i] : points[i + 1]] = self._state_id(closure)
            self.table[state] = new_row
            return self.table[state]

    def expand_all(self, states: np.ndarray) -> None:
        """Make sure every state in `states` has its row (used before a vectorized gather)."""
        unexpanded = self.table[:, 0] == UNEXPANDED
        pending = states[unexpanded[states]]
        for state in np.unique(pending).tolist():
            self.expand(state)

    def next_state(self, state: int, byte: int) -> int:
        return int(self.expand(state)[byte])

    def walk(self, state: int, data: bytes) -> int:
        """The state after `data`, or DEAD."""
        for byte in data:
            if state == DEAD:
                return DEAD
            state = int(self.expand(state)[byte])
        return state

    def forced_bytes(self, state: int) -> bytes:
        """The bytes every continuation from `state` must start with (empty where there is a choice)."""
        cached = self._forced.get(state)
        if cached is not None:
            return cached
        out = bytearray()
        current = state
        while current != DEAD and not self.is_accepting_state[current] and len(out) < _MAX_FORCED_BYTES:
            live = np.flatnonzero(self.expand(current) >= 0)
            if len(live) != 1:
                break
            out.append(int(live[0]))
            current = int(self.table[current, live[0]])
        self._forced[state] = bytes(out)
        return self._forced[state]
