"""The HTTP connection protocol: uvicorn's h11 protocol with a deadline for a request's headers.

uvicorn times out idle keep-alive connections, but a client that opens a connection and then sends its headers a
byte at a time (or never finishes them) holds it forever: any data resets the keep-alive timer. Here a
connection must deliver a request's complete headers within `header_timeout_s` of opening (or of the previous
response); the body has its own deadline in `api._read_json`. Invariant: a connection with no request in
progress lives at most `header_timeout_s` past its last complete request or response.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class TimedH11Protocol(H11Protocol):
    """h11 with a header deadline; `with_timeout` makes the class uvicorn is given."""

    header_timeout_s = 30.0

    @classmethod
    def with_timeout(cls, timeout_s: float) -> type[TimedH11Protocol]:
        return type("TimedH11Protocol", (cls,), {"header_timeout_s": timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()  # headers not complete in time: a stalled or slowloris client

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a request's headers arrived: the app's own deadlines take over

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
