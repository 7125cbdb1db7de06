"""The handbooks one CLI command opened, closed when the command ends (cli._dispatch).

Python 3.13 QA: left to the garbage collector, each open handbook read as `ResourceWarning: unclosed database`, and
its WAL file stayed until then. The registry belongs to one dispatch, not to the process: a context variable holds
it, so a handler called directly (a test, an embedding) owns what it opened, as any caller of HandbookStore does,
and two commands dispatched on two threads never close each other's handbooks. Standard library only: cli imports
this at start-up.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)
ExitCallback = Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], bool]


class _Opened:
    """One dispatch's handbooks: closed by its exit stack, newest first."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.count = 0


# None: no dispatch is running in this context (the caller owns what it opens)
_OPENED: contextvars.ContextVar[_Opened | None] = contextvars.ContextVar("opened_stores", default=None)


def opening(store: C) -> C:
    """Register `store` to be closed when the running dispatch ends; outside one, leave it to its caller."""
    opened = _OPENED.get()
    if opened is not None:
        opened.stack.push(_closer(store))
        opened.count += 1
    return store


def registered() -> int:
    """How many handbooks the running dispatch will close (0 outside one)."""
    opened = _OPENED.get()
    return 0 if opened is None else opened.count


@contextlib.contextmanager
def closing_opened() -> Iterator[None]:
    """Close every handbook opened inside (through `opening`), newest first, however the body ends. A close that
    fails does not keep the others open, and does not hide the error the command itself raised (that one is
    reported; the failed close is logged)."""
    opened = _Opened()
    token = _OPENED.set(opened)
    try:
        with opened.stack:
            yield
    finally:
        _OPENED.reset(token)


def _closer(store: Closable) -> ExitCallback:
    def close(kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> bool:
        try:
            store.close()
        except Exception as failure:
            if error is None:
                raise  # the command's error now; the closes after it still run (ExitStack)
            log.warning("could not close %s after an earlier error: %s", _named(store), failure)
        return False  # never swallow the error in flight

    return close


def _named(store: Closable) -> str:
    path = getattr(store, "path", None)
    return f"the handbook {path}" if path is not None else "a handbook"
