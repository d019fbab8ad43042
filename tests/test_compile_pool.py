"""The compile pool: identical compiles share one job, a compile stops when its time is up or its last waiter
leaves, and a compile bomb neither starves requests whose grammars are cached nor stays in the cache."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from strictcall.grammars import check_cancelled
from strictcall.server.compile_pool import CompilePool, CompileTimeoutError


def spinning(started: threading.Event, stopped: threading.Event, result: str = "done", seconds: float = 30.0):
    """A build that runs until cancelled (or `seconds`), as a compile bomb does."""
    def build() -> str:
        started.set()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                check_cancelled()
                time.sleep(0.001)
            return result
        finally:
            stopped.set()
    return build


def test_identical_compiles_share_one_job() -> None:
    calls = []

    def build() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "grammar"

    async def scenario() -> list[str]:
        pool = CompilePool(max_workers=2)
        return await asyncio.gather(*(pool.run("key", build, 10) for _ in range(6)))

    assert asyncio.run(scenario()) == ["grammar"] * 6 and len(calls) == 1


def test_a_compile_that_times_out_stops() -> None:
    started, stopped = threading.Event(), threading.Event()

    async def scenario() -> None:
        pool = CompilePool(max_workers=1)
        with pytest.raises(CompileTimeoutError):
            await pool.run("bomb", spinning(started, stopped), 0.3)

    asyncio.run(scenario())
    assert started.is_set() and stopped.wait(5), "the timed-out compile kept running"


def test_a_compile_stops_when_its_last_waiter_leaves_but_not_before() -> None:
    started, stopped = threading.Event(), threading.Event()

    async def scenario() -> None:
        pool = CompilePool(max_workers=1)
        build = spinning(started, stopped, seconds=1.0)
        first = asyncio.ensure_future(pool.run("k", build, 30))
        second = asyncio.ensure_future(pool.run("k", build, 30))
        await asyncio.sleep(0.2)
        first.cancel()  # one client goes away: the other still waits, the job runs on
        await asyncio.sleep(0.2)
        assert not stopped.is_set()
        assert await second == "done"

    asyncio.run(scenario())
    started.clear()
    stopped.clear()

    async def everyone_leaves() -> None:
        pool = CompilePool(max_workers=1)
        waiter = asyncio.ensure_future(pool.run("k", spinning(started, stopped), 30))
        await asyncio.sleep(0.2)
        waiter.cancel()
        await asyncio.sleep(0)

    asyncio.run(everyone_leaves())
    assert stopped.wait(5), "the abandoned compile kept running"


def test_compiles_of_other_keys_queue_behind_a_full_pool_but_a_new_key_after_a_cancel_starts_fresh() -> None:
    started, stopped = threading.Event(), threading.Event()

    async def scenario() -> str:
        pool = CompilePool(max_workers=1)
        with pytest.raises(CompileTimeoutError):
            await pool.run("k", spinning(started, stopped), 0.2)
        return await pool.run("k", lambda: "fresh", 5)  # the cancelled job is not reused

    assert asyncio.run(scenario()) == "fresh"
