"""The store behind `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`: bounded in entries and in bytes
(what it holds is JSON bytes, counted exactly), least recently used out first, conversations as chains."""

from __future__ import annotations

import json
import random

import pytest

from strictcall.server.response_store import MissingResponse, ResponseStore


def _body(response_id: str, text: str = "") -> dict:
    return {"id": response_id, "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}


def _size(body: dict, items: list) -> int:
    return sum(len(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()) for v in (body, items))


def test_bytes_and_entries_never_exceed_their_bounds() -> None:
    rng = random.Random(0)
    store = ResponseStore(max_entries=20, max_bytes=5000)
    sizes: dict[str, int] = {}
    for i in range(300):
        body, items = _body(f"r{i}", "é" * rng.randrange(0, 900)), [{"type": "message", "role": "user", "content": "x" * rng.randrange(0, 300)}]
        kept = store.put(f"r{i}", body, items, None)
        assert kept == (_size(body, items) <= 5000)
        sizes[f"r{i}"] = _size(body, items)
        assert len(store) <= 20 and store.bytes_used <= 5000
        held = [key for key in sizes if store.get(key) is not None]
        assert store.bytes_used == sum(sizes[key] for key in held) and len(held) == len(store)


def test_least_recently_used_goes_first_and_a_conversation_in_use_stays() -> None:
    store = ResponseStore(max_entries=4, max_bytes=10**6)
    store.put("a", _body("a"), [{"type": "message", "role": "user", "content": "1"}], None)
    store.put("b", _body("b"), [], "a")
    store.put("c", _body("c"), [], "b")
    store.put("x", _body("x"), [], None)
    turns = store.conversation("c")  # touches a, b and c
    assert [body["id"] for _, body in turns] == ["a", "b", "c"] and turns[0][0] == [{"type": "message", "role": "user", "content": "1"}]
    store.put("y", _body("y"), [], None)
    assert store.get("x") is None and store.get("a") is not None


def test_a_broken_chain_names_the_missing_response() -> None:
    store = ResponseStore(max_entries=10, max_bytes=10**6)
    store.put("a", _body("a"), [], None)
    store.put("b", _body("b"), [], "a")
    assert store.delete("a") and not store.delete("a")
    with pytest.raises(MissingResponse) as caught:
        store.conversation("b")
    assert caught.value.response_id == "a"
    with pytest.raises(MissingResponse):
        store.conversation("nope")


def test_an_entry_larger_than_the_store_is_not_kept_and_evicts_nothing() -> None:
    store = ResponseStore(max_entries=10, max_bytes=1000)
    assert store.put("small", _body("small"), [], None)
    assert not store.put("big", _body("big", "x" * 2000), [], None)
    assert store.get("big") is None and store.get("small") is not None
    assert not ResponseStore(max_entries=0, max_bytes=1000).put("a", _body("a"), [], None)
    assert not ResponseStore(max_entries=10, max_bytes=0).put("a", _body("a"), [], None)


def test_putting_an_id_again_replaces_it() -> None:
    store = ResponseStore(max_entries=10, max_bytes=10**6)
    store.put("a", _body("a", "old"), [], None)
    store.put("a", _body("a", "new"), [], None)
    assert len(store) == 1 and store.get("a") == _body("a", "new") and store.bytes_used == _size(_body("a", "new"), [])
