"""Log records as one line each, whatever text they carry.

Why: a log line often quotes untrusted text verbatim (a backend's error body, a client's Origin header as the SDK
logs it, an id or a step). A newline in it forges a record the operator cannot tell from ours ("... CRITICAL
skillorchestra: ..."), and terminal escapes (OSC sets the window title, CSI recolours or clears the screen) act on
the operator's terminal. The formatter escapes every control character of the formatted record (Unicode category
Cc, plus the line and paragraph separators) as \\n, \\r, \\t or \\xNN, so it covers our loggers and every library's
alike. A traceback stays several lines (that is how it reads), indented, with its other control characters escaped.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_BREAKING = [chr(code) for code in range(0x110) if unicodedata.category(chr(code)) == "Cc"] + ["\u2028", "\u2029"]
ONE_LINE = str.maketrans({c: _NAMED.get(c, f"\\x{ord(c):02x}") for c in _BREAKING})
KEEP_NEWLINES = str.maketrans({c: _NAMED.get(c, f"\\x{ord(c):02x}") for c in _BREAKING if c != "\n"})


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes: one line, inert on a terminal."""
    return text.translate(ONE_LINE)


class OneLineFormatter(logging.Formatter):
    """A Formatter whose record is one line (message, logger name and all); see the module's docstring."""

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
