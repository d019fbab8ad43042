"""Cooperative cancellation of a compile: the compiler's loops that grow with the input (the schema compiler, the
regex parser, the NFA and DFA builders) call `check_cancelled()`, so a compile whose caller gave up or whose time
ran out stops within milliseconds instead of running on (a thread cannot be killed).

Invariant: outside `cancellable(...)` the check never raises; inside, it raises `CompileCancelledError` once the
event is set. A cancelled compile is not a user error, so compilers never cache it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


class CompileCancelledError(Exception):
    """The compile was cancelled (its last waiter left, or its timeout passed)."""


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Compiles on this thread stop (raise `CompileCancelledError`) once `event` is set."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = previous


def check_cancelled() -> None:
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise CompileCancelledError("the compile was cancelled")
