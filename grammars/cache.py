"""A thread-safe least-recently-used cache, bounded in entries and, where sizes are given, in bytes.

Invariant: after every `put`, the cache holds at most `max_entries` entries and at most `max_bytes` bytes (the
sum of the sizes given with them), evicting least recently used entries first; an entry larger than the whole
budget is not kept at all. Every grammar cache in the package is one of these, so each is bounded the same way.
"""

from __future__ import annotations

import threading
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
