"""Write a user's output file all at once or not at all.

Why: `Path.write_text` truncates the old file before it writes the new one, so a failed write (disk full, a file-size
limit) or a killed process destroys the previous content, e.g. last night's handbook export. Here the new content goes
into a temporary file in the same folder (so `os.replace` stays on one file system and is atomic), is flushed and
fsynced, and only then replaces the target. On any failure, KeyboardInterrupt included, the temporary file is removed
and the target is left as it was. A kill -9 cannot be caught: it may leave a hidden `.NAME.*.tmp` file beside the
target, but the target itself is still whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text handle whose content replaces `path` when the block ends without an exception, and never before.

    - A new file gets the default permissions (0666 less the umask), as `open` would give it.
    - An existing file keeps its permission bits (a 0600 backup stays 0600); its owner becomes the writing user.
    - A symbolic link keeps pointing at its file: the file it names is replaced, not the link.
    - A pipe, a device, /dev/stdout or a file with several hard links is written directly (in place).
    - A folder that refuses new files while the existing target is writable: written in place (the old behaviour),
      as there is nowhere to put the temporary file.
    Missing folders are not created; OSErrors (no such folder, a directory, no permission) reach the caller.
    """
    target = Path(path)
    existing = _stat(target)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    if existing is not None and (not stat.S_ISREG(existing.st_mode) or existing.st_nlink > 1):
        # a pipe or device is no file to replace; a hard-linked file's other names must see the new content too
        with target.open("w", encoding=encoding) as handle:
            yield handle
        return
    real = Path(os.path.realpath(target))  # a link's own folder may not be the file's
    try:
        fd, temporary = _create_temporary(real)
    except PermissionError:
        if existing is None:
            raise
        with target.open("w", encoding=encoding) as handle:
            yield handle
        return
    try:
        try:
            opened = os.fdopen(fd, "w", encoding=encoding)
        except BaseException:  # an unknown encoding: the descriptor has no owner yet
            os.close(fd)
            raise
        with opened as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if existing is not None:
            os.chmod(temporary, stat.S_IMODE(existing.st_mode))
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(real.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """`Path(path).write_text(text)` that leaves the old file whole when it fails (see atomic_writer)."""
    with atomic_writer(path, encoding=encoding) as handle:
        handle.write(text)


def _stat(path: Path) -> os.stat_result | None:
    """The target's status, following links; None when there is nothing there yet (or a dangling link)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _create_temporary(real: Path) -> tuple[int, str]:
    """A new hidden file beside `real`, created with mode 0666 so the umask decides, as it would for `open`."""
    while True:
        # the name is cut so a target name near the file system's limit (255 bytes) still leaves room for ours
        short = os.fsencode(real.name)[:200].decode("utf-8", "ignore")  # bytes count, not characters
        name = str(real.with_name(f".{short}.{secrets.token_hex(6)}{TEMP_SUFFIX}"))
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), name
        except FileExistsError:
            continue


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort (some file systems cannot open or fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
