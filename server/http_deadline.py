"""A deadline on request headers for the HTTP transports.

uvicorn times out an idle kept-alive connection but not one whose request headers never finish arriving, and the
bearer token is checked only once they have: anyone who could reach the port held connections open for as long as
they liked, a few hundred of them at a time ran the server out of file descriptors and it stopped answering (QA).
This protocol closes a connection whose request line and headers are not complete within `timeout_s` of its
opening, or of the end of its previous response. A request's body and the response (an SSE stream, a long
delegate) are not limited: by then the token has been checked.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("skillorchestra.http")

HEADERS_TIMEOUT_S = 15.0  # generous for any real client on a slow link (nginx waits 60 s, Apache 20-40 s)


class HeadersDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head in time."""

    timeout_s: float = HEADERS_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in (or the connection failed)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already have begun a pipelined next request
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # kept alive: the next request's head gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closed a connection whose request headers took over %.0f s", self.timeout_s)
            self.transport.close()
