"""The responses kept for `GET /v1/responses/{id}`, `DELETE` and `previous_response_id`: in memory, bounded in
entries and in bytes, least recently used first out.

Each entry holds one response as JSON bytes: its body (what `GET` returns, output included) and its own input
items (canonical, without `instructions`, which do not carry over), plus the id of the response it continued.
A conversation is the chain of its entries, so a long agent loop costs memory linear in its turns; continuing a
chain touches every entry of it, so a conversation in use is the last to be evicted.

Invariant: the bytes held (the entries' JSON) never exceed `max_bytes`, nor the entries `max_entries`; an entry
larger than `max_bytes` on its own is not kept. Used from the event loop only (no locking needed; a lock is taken
anyway, so a thread would be safe too).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("strictcall.server")


class MissingResponse(KeyError):
    """A response of a chain is not (or no longer) in the store; `response_id` names it."""

    def __init__(self, response_id: str):
        super().__init__(response_id)
        self.response_id = response_id


@dataclass(frozen=True)
class _Entry:
    body: bytes
    items: bytes
    previous_id: str | None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.items)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class ResponseStore:
    """Stored responses by id, at most `max_entries` of them and `max_bytes` of JSON (0 keeps nothing)."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def put(self, response_id: str, body: dict[str, Any], input_items: list[dict[str, Any]], previous_id: str | None) -> bool:
        """Keep a response (evicting the least recently used as needed); False if it alone is over `max_bytes`."""
        entry = _Entry(_dumps(body), _dumps(input_items), previous_id)
        if entry.size > self.max_bytes or self.max_entries < 1:
            if self.max_bytes and self.max_entries:
                logger.info("%s: not stored: %d bytes of JSON, more than the whole store (--response-store-bytes %d)", response_id,
                            entry.size, self.max_bytes)
            return False
        with self._lock:
            self._remove(response_id)
            while self._entries and (len(self._entries) >= self.max_entries or self._bytes + entry.size > self.max_bytes):
                self._remove(next(iter(self._entries)))
            self._entries[response_id] = entry
            self._bytes += entry.size
        return True

    def get(self, response_id: str) -> dict[str, Any] | None:
        """The stored body (what `GET /v1/responses/{id}` returns), or None."""
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            self._entries.move_to_end(response_id)
        return json.loads(entry.body)

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._remove(response_id)

    def conversation(self, response_id: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """The turns that led to `response_id` and it, oldest first: (input items, body) per response.

        Raises:
            MissingResponse: one of them is not stored (never stored, deleted or evicted).
        """
        chain = []
        with self._lock:
            current: str | None = response_id
            seen = set()
            while current is not None and current not in seen:
                seen.add(current)
                entry = self._entries.get(current)
                if entry is None:
                    raise MissingResponse(current)
                chain.append((current, entry))
                current = entry.previous_id
            for key, _ in reversed(chain):  # the newest is touched last: it is the most recently used
                self._entries.move_to_end(key)
        return [(json.loads(entry.items), json.loads(entry.body)) for _, entry in reversed(chain)]

    def _remove(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
