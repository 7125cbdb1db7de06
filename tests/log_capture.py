"""Records of one logger as the server's stderr handler writes them (server/log_format.OneLineFormatter)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from skillorchestra.server.log_format import LOG_FORMAT, OneLineFormatter


@contextmanager
def formatted_log(name: str) -> Iterator[io.StringIO]:
    """What logger `name` writes meanwhile, formatted as on the server's stderr (and kept from the root logger)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.propagate = False
    try:
        yield stream
    finally:
        log.removeHandler(handler)
        log.propagate = True
