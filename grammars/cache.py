"""Bounded caches: a thread-safe least-recently-used cache (`LruCache`), bounded in entries and, where sizes are
given, in bytes; and a byte budget (`ByteBudget`) over objects that grow after they are cached (a grammar's
token masks are computed on first visit, during generation).

Invariants: after every `put`, an `LruCache` holds at most `max_entries` entries and at most `max_bytes` bytes
(the sum of the sizes given with them), evicting least recently used entries first; an entry larger than the
whole budget is not kept at all. A `ByteBudget` counts the bytes of every live object tracked with it (an object's
bytes are released when it is garbage-collected); whenever growth passes `max_bytes`, the caches registered with
it evict their least recently used entries until the count is back under it (or they are empty: what running
requests still hold cannot be freed).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """Keys to values, least recently used dropped first.

    Args:
        max_entries: most entries kept.
        max_bytes: most bytes kept (the sizes given to `put`); None: entries only.
    """

    def __init__(self, max_entries: int, max_bytes: int | None = None):
        if max_entries < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError(f"LruCache bounds must be >= 1, got max_entries={max_entries}, max_bytes={max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._num_bytes = 0
        self._lock = threading.Lock()
        self.num_hits = 0
        self.num_misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.num_misses += 1
                return None
            self._entries.move_to_end(key)
            self.num_hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V, num_bytes: int = 0) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._num_bytes -= old[1]
            if self.max_bytes is not None and num_bytes > self.max_bytes:
                return
            self._entries[key] = (value, num_bytes)
            self._num_bytes += num_bytes
            while len(self._entries) > self.max_entries or (self.max_bytes is not None and self._num_bytes > self.max_bytes):
                _, (_, size) = self._entries.popitem(last=False)
                self._num_bytes -= size

    def evict_oldest(self) -> bool:
        """Drop the least recently used entry; False if there is none."""
        with self._lock:
            if not self._entries:
                return False
            _, (_, size) = self._entries.popitem(last=False)
            self._num_bytes -= size
        return True


class ByteBudget:
    """The live bytes of the objects tracked with it, kept under `max_bytes` by evicting from registered caches.

    Args:
        max_bytes: the budget (`--grammar-cache-mb`).
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"ByteBudget.max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self._caches: list[LruCache] = []
        self._lock = threading.RLock()  # reentrant: an eviction can free an object, whose release comes back here

    def register(self, cache: LruCache, first: bool = False) -> None:
        """Evict from `cache` when over budget (in registration order, or before the others with `first`)."""
        self._caches.insert(0, cache) if first else self._caches.append(cache)

    def track(self, owner: object) -> Tracker:
        """A tracker for `owner`'s bytes, released when `owner` is garbage-collected."""
        tracker = Tracker(self)
        weakref.finalize(owner, tracker.release)
        return tracker

    def _adjust(self, delta: int) -> None:
        with self._lock:
            self.num_bytes += delta
            if delta > 0 and self.num_bytes > self.max_bytes:
                for cache in self._caches:
                    while self.num_bytes > self.max_bytes and cache.evict_oldest():
                        pass


class Tracker:
    """One object's bytes in a `ByteBudget`.

    It holds the budget weakly: the finalizer registry holds the tracker for as long as its owner lives, and a
    strong reference would keep the budget, its caches and so every owner they hold (the finalizer's own target)
    alive for ever once their compiler is dropped.
    """

    def __init__(self, budget: ByteBudget):
        self._budget = weakref.ref(budget)
        self.num_bytes = 0

    def set(self, num_bytes: int) -> None:
        delta, self.num_bytes = num_bytes - self.num_bytes, num_bytes
        budget = self._budget()
        if delta and budget is not None:
            budget._adjust(delta)

    def release(self) -> None:
        self.set(0)
