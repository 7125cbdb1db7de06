"""Checks that a command's output path can be written, made before the command's (long) work starts.

Why by trying rather than os.access: as root os.access says yes to everything, even to /proc, where nothing can be
created; only an attempt tells. Each attempt is undone (a probe file or folder is removed at once), so a refused
command leaves nothing behind and an accepted one finds the path as it was.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from skillorchestra.handbook.errors import InvalidInput

PROBE_PREFIX = ".skillorchestra-probe-"


def check_output_file(flag: str, path: Path) -> None:
    """`path` can be written as a file (appended to if it exists); missing folders above it can be created."""
    if path.is_dir():
        raise InvalidInput(flag, str(path), "a file path (this is a directory)")
    if path.exists():
        if stat.S_ISREG(path.stat().st_mode):  # never open a pipe or device early: its reader would see the end

            def open_for_append() -> None:
                path.open("a").close()  # appending nothing changes neither the content nor the time stamps

            _attempt(flag, path, "a writable file", open_for_append)
        return
    if not path.parent.is_dir():
        check_output_dir(flag, path.parent, given=path)
        return

    def create_and_remove() -> None:
        path.open("x").close()
        path.unlink()

    _attempt(flag, path, "a file path in a writable folder", create_and_remove)


def check_output_dir(flag: str, folder: Path, *, given: Path | None = None) -> None:
    """`folder` is a directory files can be created in, or can be made: its nearest existing ancestor takes one."""
    shown = given if given is not None else folder
    if given is None and folder.exists() and not folder.is_dir():
        raise InvalidInput(flag, str(shown), "a directory (this is an existing file)")
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInput(flag, str(shown), f"a path whose folders can be created ({existing} is not a directory)")

    def make_and_remove() -> None:
        os.rmdir(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=existing))

    _attempt(flag, shown, "a path in a writable folder", make_and_remove, where=f"{existing}: ")


def _attempt(flag: str, path: Path, expected: str, probe: Callable[[], None], *, where: str = "") -> None:
    try:
        probe()
    except OSError as exc:
        raise InvalidInput(flag, str(path), f"{expected} ({where}{exc.strerror or exc})") from None


def write_stdout_utf8(text: str) -> None:
    """JSON for stdout (`export -`, `eval --json -`) as UTF-8 whatever the console's encoding: the CLI lets a
    console escape what it cannot show (handbook show), and an escaped JSON text is no longer JSON (review)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stdout (an embedding, a test capture)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def progress_shown() -> bool:
    """Progress lines on stderr are shown unless --log-level asks for less than warnings (ERROR or CRITICAL): a
    script that wants stderr for errors alone gets them (QA: learn's progress ignored --log-level)."""
    return logging.getLogger().getEffectiveLevel() <= logging.WARNING
