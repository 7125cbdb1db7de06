"""Log records as one line each, whatever text they carry.

Why: a log line often quotes untrusted text verbatim (a backend's error body, a client's Origin header as the SDK
logs it, an id or a step). A newline in it forges a record the operator cannot tell from ours ("... CRITICAL
skillorchestra: ..."), and terminal escapes (OSC sets the window title, CSI recolours or clears the screen) act on
the operator's terminal. The formatter escapes every control character of the formatted record (Unicode category
Cc, plus the line and paragraph separators) as \\n, \\r, \\t or \\xNN, so it covers our loggers and every library's
alike. A traceback stays several lines (that is how it reads), indented, with its other control characters escaped.
Secrets are masked in the formatted record, whichever library wrote it.

`--log-format json` (or SKILLORCHESTRA_LOG_FORMAT=json) writes each record as one JSON object instead, for log
shippers (Loki, Elasticsearch, CloudWatch): JSON escapes every control character itself, and the same masking applies.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal

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


class JsonLineFormatter(logging.Formatter):
    """A record as one JSON object on one line: time (UTC, ISO 8601), level, logger, message, and the traceback or
    stack when there is one, each masked of secrets as OneLineFormatter masks its line."""

    def format(self, record: logging.LogRecord) -> str:
        secrets = log_secrets()
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, str] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage(), secrets),
        }
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info), secrets)
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info), secrets)
        return json.dumps(entry)  # ASCII: no raw control, bidi or line-separator character reaches the terminal


def announce(text: str, level: str = "INFO") -> None:
    """A line the operator sees whatever the log level (the address a server listens on, the error a command
    stopped on): as written, or as one JSON record when the logs are JSON, so that a log shipper's stream stays all
    JSON."""
    if any(isinstance(h.formatter, JsonLineFormatter) for h in logging.getLogger().handlers):
        record = logging.makeLogRecord({"name": "skillorchestra", "levelname": level, "msg": text})
        text = JsonLineFormatter().format(record)
    print(text, file=sys.stderr, flush=True)


LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """The root logger writes one-line records to stderr (stdout is the stdio transport's channel)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else OneLineFormatter(LOG_FORMAT))
    logging.captureWarnings(log_format == "json")  # a library's warning as a record too, not a bare stderr line
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)  # also where a host (or pytest) configured logging first: basicConfig left it
