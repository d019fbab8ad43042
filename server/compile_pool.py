"""Grammar compiles off the event loop, on a small pool of their own: de-duplicated, time-limited, cancellable.

A compile bomb (a small schema whose regex is huge) must not starve other requests. So compiles run on
`max_workers` threads of their own (not asyncio's shared default pool), identical compiles in flight share one
job, and a job is cancelled (cooperatively: `grammars.cancel`) when its timeout passes or its last waiter goes
away, so it stops instead of running on and filling the cache. Requests whose grammars are cached never come
here (planning looks them up first), and requests without grammars never do.

Invariant: at most `max_workers` compiles run at once; a job whose every waiter has left, or whose time is up, is
cancelled; a cancelled job's result is never cached (`CompileCancelledError` is not a grammar error).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from strictcall.grammars import cancellable

T = TypeVar("T")


class CompileTimeoutError(Exception):
    """A compile took longer than its timeout (it was cancelled)."""


@dataclass
class _Job:
    future: asyncio.Future[Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    num_waiters: int = 0


class CompilePool:
    """Runs `build()` calls keyed by what they compile.

    Args:
        max_workers: compiles running at once (the rest queue).
    """

    def __init__(self, max_workers: int = 2):
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="strictcall-compile")
        self._jobs: dict[Hashable, _Job] = {}

    async def run(self, key: Hashable, build: Callable[[], T], timeout_s: float) -> T:
        """`build()`'s result, shared with every concurrent caller of the same key.

        Raises:
            CompileTimeoutError: not done in `timeout_s` (the job is cancelled if no one else waits for it).
            whatever `build` raises (a grammar error, for the caller to answer).
        """
        job = self._jobs.get(key)
        if job is None or job.cancel.is_set():  # a cancelled job is still stopping: this caller needs a fresh one
            job = self._start(key, build)
        job.num_waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            raise CompileTimeoutError(f"the compile took longer than {timeout_s:g} s") from None
        finally:
            job.num_waiters -= 1
            if job.num_waiters == 0 and not job.future.done():
                job.cancel.set()  # the last waiter left (timed out, or its client went away)

    def _start(self, key: Hashable, build: Callable[[], T]) -> _Job:
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future())
        self._jobs[key] = job

        def work() -> T:
            with cancellable(job.cancel):
                return build()

        def finished(done: Any) -> None:
            if self._jobs.get(key) is job:
                del self._jobs[key]
            if not job.future.done():
                error = done.exception()
                job.future.set_exception(error) if error is not None else job.future.set_result(done.result())

        self._executor.submit(work).add_done_callback(lambda done: loop.call_soon_threadsafe(finished, done))
        job.future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # retrieved: no "never retrieved" log
        return job

    def shutdown(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
