"""Log records as one line each, whatever text they carry.

Why: a log line often quotes untrusted text verbatim (a backend's error body, a client's Origin header as the SDK
logs it, an id or a step). A newline in it forges a record the operator cannot tell from ours ("... CRITICAL
skillorchestra: ..."), and terminal escapes (OSC sets the window title, CSI recolours or clears the screen) act on
the operator's terminal. The formatter escapes every control character of the formatted record (Unicode category
Cc, plus the line and paragraph separators) as \\n, \\r, \\t or \\xNN, so it covers our loggers and every library's
alike. A traceback stays several lines (that is how it reads), indented, with its other control characters escaped.
Secrets are masked in the formatted record, whichever library wrote it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from skillorchestra.handbook.inert_text import KEEP_NEWLINES, one_line
from skillorchestra.server.masking import log_secrets, scrub

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """A Formatter whose record is one line (message, logger name and all), with every secret masked (a library's
    record may quote a key: server/masking.log_secrets); see the module's docstring."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), log_secrets())

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei).translate(KEEP_NEWLINES))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info).translate(KEEP_NEWLINES))


def _indented(text: str) -> str:
    """Every line of a traceback indented: an exception's message may hold newlines (a provider's error text), and
    a line of it must not start where a record starts, at column 0 ("2026-... CRITICAL skillorchestra: ...")."""
    return "\n".join("  " + line for line in text.split("\n"))


def configure_logging(level: str) -> None:
    """The root logger writes one-line records to stderr (stdout is the stdio transport's channel)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)  # also where a host (or pytest) configured logging first: basicConfig left it
