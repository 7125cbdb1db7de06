"""A deadline on request headers for the HTTP transports.

uvicorn times out an idle kept-alive connection but not one whose request headers never finish arriving, and the
bearer token is checked only once they have: anyone who could reach the port held connections open for as long as
they liked, a few hundred of them at a time ran the server out of file descriptors and it stopped answering (QA).
This protocol closes a connection whose request line and headers are not complete within `timeout_s` of its
opening, or of the end of its previous response, and one still sending a body after it was answered (a refused
token is answered before its body is read). A request's body and the response of a request the app is handling (an
SSE stream, a long delegate) are not limited: by then the token has been checked.

The deadline bounds how long one such connection lasts, not how many there are: a client opening them faster than
they expire still ran the process out of file descriptors (security review: /healthz stopped answering). So at most
`max_waiting` connections may wait on their client at once, process-wide; past that the one waiting longest is
closed (an idle kept-alive connection, or a head that is taking its time), so new clients are still heard.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("skillorchestra.http")

HEADERS_TIMEOUT_S = 15.0  # generous for any real client on a slow link (nginx waits 60 s, Apache 20-40 s)
MAX_WAITING = 256  # connections waiting on their client at once (a request in the app's hands is not counted)


class HeadersDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head in time."""

    timeout_s: float = HEADERS_TIMEOUT_S
    max_waiting: int = MAX_WAITING
    _deadline: asyncio.TimerHandle | None = None
    # every connection of the process waiting on its client, longest-waiting first (file descriptors are per process)
    _waiting: ClassVar[dict[HeadersDeadline, None]] = {}

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
        waiting = HeadersDeadline._waiting
        waiting[self] = None
        while len(waiting) > self.max_waiting:
            oldest = next(iter(waiting))
            oldest._disarm()
            if not oldest.transport.is_closing():
                log.debug("closed the connection waiting longest: %d were waiting on their clients", len(waiting) + 1)
                oldest.transport.close()

    def _disarm(self) -> None:
        HeadersDeadline._waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closed a connection whose request headers took over %.0f s", self.timeout_s)
            self.transport.close()


OPEN_FILES_WANTED = 65_536


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> tuple[int, int]:
    """Lift the soft limit on open files towards the hard one (often 1,024 of 524,288): each connection is a file,
    and the soft limit is what a connection flood runs out of first. Returns the (soft, hard) limits now."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):  # a sandbox may refuse: the server runs with the limit it has
            log.debug("could not raise the open-files limit from %d", soft)
    return soft, hard


class EveryMinuteAtMost(logging.Filter):
    """Lets one record through per `interval_s` for each message that repeats in a flood: asyncio logs a traceback
    for every failed accept while the process is out of file descriptors (security review: 37 MB in 20 s)."""

    FLOODS = ("socket.accept() out of system resource",)

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.clock = interval_s, clock
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        flood = next((f for f in self.FLOODS if message.startswith(f)), None)
        if flood is None:
            return True
        now = self.clock()
        if now - self._last.get(flood, -math.inf) < self.interval_s:
            return False
        self._last[flood] = now
        return True
