"""A deadline on request headers for the HTTP transports.

uvicorn times out an idle kept-alive connection but not one whose request headers never finish arriving, and the
bearer token is checked only once they have: anyone who could reach the port held connections open for as long as
they liked, a few hundred of them at a time ran the server out of file descriptors and it stopped answering (QA).
This protocol closes a connection whose request line and headers are not complete within `timeout_s` of its
opening, or of the end of its previous response, and one still sending a body after it was answered (a refused
token is answered before its body is read). A request's body and the response of a request the app is handling (an
SSE stream, a long delegate) are not limited: by then the token has been checked.
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
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already have begun a pipelined next request
        self._follow()

    def _follow(self) -> None:
        """The deadline runs while the connection waits on the client with no request in the app's hands: for its
        next request head, or for the rest of a body nobody will read (answered early, as a refused token is: the
        review found a trickled body held the connection forever). It keeps running across the bytes of one head,
        and stops while the app handles a request."""
        if self.transport.is_closing():
            self._disarm()
            return
        waiting = self.conn.their_state is h11.IDLE or self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)
        if not waiting:
            self._disarm()
        elif self._deadline is None:
            self._arm()

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
