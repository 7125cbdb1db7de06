"""One SQLite file shared by threads and processes: the connection, its lock and its write transactions.

Why this is its own module: a host may run one stdio server per window while the CLI learns or imports into the
same file, and sync MCP tools run on worker threads. So every write takes the file's write lock up front
(`BEGIN IMMEDIATE`; a deferred transaction that upgrades to a writer fails at once instead of waiting), waits for
another process's lock with this process's lock released (so reads go on meanwhile), and commits or rolls back as
one unit. What the file holds is the subclass's business (handbook/store.py).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlite_utils import Database

from skillorchestra.handbook.errors import FileReplaced, InvalidInput

BUSY_TIMEOUT_S = 30.0
# the sleeps between attempts at a write lock another connection holds: SQLite's busy handler's, then its last
BUSY_DELAYS_S = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)

# SQLite's primary result codes that mean the file cannot be opened or written where it is (a read-only file
# system, directory or file, a path SQLite cannot create, a full disk, an I/O error): said with the path, unlike
# "database is locked"
_OPEN_FAILURES = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL}
)


def _cannot_open(path: str | Path, exc: OSError | sqlite3.Error) -> InvalidInput:
    """SQLite says only "unable to open database file" (and mkdir only the folder): name the path and `db`."""
    if isinstance(exc, FileExistsError):  # mkdir met a file where a folder of the path should be
        reason = f"{exc.filename} is not a directory"
    else:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return InvalidInput("db", shown_path(path), f"a database file this process can create, open and write ({reason})")


def shown_path(path: str | Path) -> str:
    """A path as an error names it: a relative one with the folder it is relative to, since a host starts the server
    in a folder its user never chose (QA: 'rel.db' refused, with no word of where that was)."""
    path = Path(path)
    if path.is_absolute():
        return str(path)
    try:
        return f"{path} (in {os.getcwd()})"
    except OSError:  # the working folder was deleted
        return f"{path} (relative to a working folder that no longer exists)"


# What to tell someone whose handbook file failed under a tool or a command (nothing was written: the transaction
# rolled back), by SQLite's primary result code
_FILE_TROUBLE = {
    sqlite3.SQLITE_FULL: "the disk holding the handbook file is full: nothing was written; free some space",
    sqlite3.SQLITE_IOERR: "the handbook file could not be read or written (disk I/O error): nothing was written",
    sqlite3.SQLITE_READONLY: "the handbook file is read-only for this process: nothing was written",
    sqlite3.SQLITE_CORRUPT: (
        "the handbook file is damaged ({error}): restore an export (`skillorchestra handbook import FILE` into a "
        "new --db) or move the file away to start a new one (if only its skill index is damaged, `skillorchestra "
        "handbook rebuild` repairs it)"
    ),
}


def file_trouble(exc: BaseException) -> str | None:
    """What went wrong with the file itself (full disk, I/O error, read-only, damaged), said for a person, or None
    for any other error (not SQLite's, a bug, or a lock another process holds)."""
    text = _FILE_TROUBLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
    return None if text is None else text.format(error=exc)


def busy_text(exc: BaseException, path: object) -> str | None:
    """What "database is locked" means here, naming the file, or None for any other error: every write waits
    BUSY_TIMEOUT_S for another process's lock before it gives up (QA: the bare SQLite message named nothing)."""
    if not is_busy(exc):
        return None
    return (
        f"the handbook {path} stayed locked by another process (a server, or a command such as learn, import or "
        f"prune, writing to it) for {BUSY_TIMEOUT_S:g} s; nothing was written: retry when it has finished"
    )


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is a write that gave up waiting for the file's lock: SQLite's busy error, or the one this
    package raises itself for the same wait (Handbook._queued_record), which has no SQLite error code."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # absent on an error raised by Python code, not by SQLite
    return _is_busy(exc) if code is not None else str(exc).startswith("database is locked")


BUSY_NOT_RECORDED = f"the handbook file stayed locked by another process for {BUSY_TIMEOUT_S:g} s"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock this statement needs ("database is locked"), as opposed to a real error."""
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None (an in-memory database, or no file there)."""
    if str(path) == ":memory:":
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _create_private(path: Path) -> None:
    """A new database file readable by its owner alone (0600; its folder 0700 when created here), before SQLite
    opens it: SQLite gives the -wal and -shm files the database's mode. The file holds step texts, decisions and
    agents' connection settings; under the usual umask it was world-readable (QA)."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # another process created it meanwhile: theirs stands
        pass


class SqliteFile:
    """A SQLite file in WAL mode behind one connection guarded by a lock (sync MCP tools run on threads)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        if self.path.is_dir():  # wherever the path came from (--db, SKILLORCHESTRA_DB, a caller): SQLite only says
            raise InvalidInput("db", shown_path(path), "a database file path (this is a directory)")  # cannot open it
        if self.path.exists() and not self.path.is_file():  # /dev/null "worked" and left /dev/null-journal behind
            raise InvalidInput("db", shown_path(path), "a database file path (this is not a regular file)")
        self._busy_s = busy_timeout_s
        self._wait_until = threading.local()  # a deadline this thread's writes wait to (see waiting_until)
        self._busy_pragma = f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}"
        self.lock = threading.RLock()
        self.closed = False
        self.writable = True  # False: the file opened read-only (see _can_write)
        try:
            if str(path) != ":memory:":
                _create_private(self.path)
            conn = sqlite3.connect(str(path), timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.OperationalError) as exc:
            raise _cannot_open(path, exc) from None
        self.db = Database(conn)
        self._identity = _identity(self.path)  # the file this connection opened (see _check_same_file)
        try:
            with self.lock:
                self._refuse_foreign(conn)  # before WAL mode, which another program's file would keep
                self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(self._busy_pragma)
                (self._checkpoint_pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
                self.writable = self._can_write(conn)
                self._prepare(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if exc.sqlite_errorcode & 0xFF in _OPEN_FAILURES:
                raise _cannot_open(path, exc) from None
            raise  # "database is locked" stays what it is: the file is fine, the moment is not
        except BaseException:
            conn.close()
            raise

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Raise when the file is another program's database (subclasses know what theirs looks like)."""

    def _can_write(self, conn: sqlite3.Connection) -> bool:
        """Try a write, undone at once. SQLite opens a file it may not write (a read-only file, an immutable one)
        read-only without a word: reading it is fine (export, show), but a server on it would fail every write
        tool later, so the server refuses it at start (see `writable`). Never waits: another connection holding the
        write lock is writing the file, so it is taken as writable (QA: the probe waited out a long import, and
        `handbook show`, which only reads, then failed); a write on a file that is not says so when it comes."""
        with self.lock:
            with self._without_busy_wait():
                busy = self._begin_immediate()  # a new transaction: nothing else is open on this connection yet
            if busy is not None:
                return True
            try:
                conn.execute("CREATE TABLE writable_probe (x)")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY:
                    raise
                return False
            finally:
                if conn.in_transaction:  # not a commit: other processes sharing the file see no change to reload
                    conn.execute("ROLLBACK")
        return True

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Bring a newly opened file to the schema its user expects (self.lock held); nothing by default."""

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.db.close()

    def free_bytes(self) -> int:
        """Space of pages that deletions freed: SQLite keeps them in the file for reuse (see `vacuum`)."""
        with self.lock:
            (free,) = self.db.conn.execute("PRAGMA freelist_count").fetchone()
            (page,) = self.db.conn.execute("PRAGMA page_size").fetchone()
        return int(free) * int(page)

    def vacuum(self) -> bool:
        """Rewrite the file without its free pages and give them back to the file system. It holds the write lock
        for the whole rewrite (other writers wait, up to the busy timeout) and needs as much free disk again.
        False: another connection was reading, so the rewritten pages stay in the WAL until a later checkpoint."""
        with self.lock:
            self._retry_busy(lambda: self.db.conn.execute("VACUUM"))
            with self._without_busy_wait():  # a reader would hold it for the whole busy timeout
                (busy, _, _) = self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own for a scan (counting every decision): WAL lets it read while this
        connection writes, where holding `lock` stalled every route and record for the scan (1.9 s at 340,000
        decisions)."""
        if self.closed:  # as the store's own connection refuses, once closed
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if str(self.path) == ":memory:":  # nothing else can open it: the one connection, under its lock
            with self.lock:
                yield self.db.conn
            return
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self._busy_s)
        try:
            yield conn
        finally:
            conn.close()

    # -- transactions ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        """A write transaction that takes the file's write lock up front (waits up to the busy timeout).

        The wait for another connection's write lock happens with `self.lock` released (see _lock_for_write):
        SQLite's own busy handler would sleep while holding it, and every read of this process (other clients'
        consults, lists, resources) would queue behind one write waiting on a CLI's import."""
        began = self._lock_for_write()
        try:
            if not began:  # nested: the outer transaction owns commit and rollback
                yield self.db
                return
            try:  # _transaction's body, written out: one generator per write, not two (a record's hot path)
                self._check_same_file()
                yield self.db
            except BaseException:
                self._roll_back()
                raise
            self._commit()
        finally:
            self.lock.release()

    def _check_same_file(self) -> None:
        """Refuse to write when the path no longer names the file this connection opened: SQLite would go on
        writing the old file (moved or deleted: acknowledged writes lost), and its -wal, shared by path with a
        copy restored in its place, damages that copy (QA). A stat per transaction, about a microsecond."""
        if self._identity is None or _identity(self.path) == self._identity:
            return
        raise FileReplaced(
            f"the handbook file {self.path} was moved, removed or replaced after this process opened it: nothing "
            "was written; restart this server or command to use the file now at that path (restore a handbook "
            "with `skillorchestra handbook import`, or with the file's -wal and -shm files moved along with it)"
        )

    @property
    def busy_timeout_s(self) -> float:
        """How long a write waits for another connection's write lock before it gives up."""
        return self._busy_s

    @contextlib.contextmanager
    def waiting_until(self, deadline: float) -> Iterator[None]:
        """This thread's writes inside wait for another connection's write lock only until `deadline`
        (time.monotonic()), not a whole busy timeout each: a call that first queued behind this process's own
        writes keeps one busy timeout from its arrival (QA: the k-th of k records waiting on a CLI's lock gave
        up after k x 30 s, past the client's own timeout, and was then written all the same)."""
        outer = getattr(self._wait_until, "deadline", None)
        self._wait_until.deadline = deadline if outer is None else min(outer, deadline)
        try:
            yield
        finally:
            self._wait_until.deadline = outer

    def _lock_for_write(self) -> bool:
        """Return holding `self.lock` and the file's write lock: True if this call began the transaction, False
        if this thread is already inside one. While another connection holds the write lock, sleep with the
        lock released, backing off as SQLite's busy handler does, until the busy timeout is spent (or this
        thread's `waiting_until` deadline comes); then raise the OperationalError ("database is locked") the last
        attempt got."""
        deadline = getattr(self._wait_until, "deadline", None)
        delays = iter(BUSY_DELAYS_S)
        while True:
            self.lock.acquire()
            try:
                conn = self.db.conn
                if conn.in_transaction:  # only this thread can be inside one while it holds the lock
                    return False
                conn.execute("PRAGMA busy_timeout=0")  # as _without_busy_wait, without a generator per write
                try:
                    busy = self._begin_immediate()
                finally:
                    conn.execute(self._busy_pragma)
            except BaseException:
                self.lock.release()
                raise
            if busy is None:
                return True
            self.lock.release()
            now = time.monotonic()
            deadline = now + self._busy_s if deadline is None else deadline
            if now >= deadline:
                raise busy
            time.sleep(min(next(delays, BUSY_DELAYS_S[-1]), deadline - now))

    def _retry_busy(self, statement: Callable[[], object]) -> None:
        """Run `statement` again, with SQLite's backoff, while it meets a lock until the busy timeout is spent.
        For switching a new file to WAL: several processes creating one file at once got "database is locked"
        there, as SQLite answers busy at once, without its busy handler, where waiting could deadlock."""
        deadline = time.monotonic() + self._busy_s
        delays = iter(BUSY_DELAYS_S)
        while True:
            try:
                statement()
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(next(delays, BUSY_DELAYS_S[-1]))

    def _begin_immediate(self) -> sqlite3.OperationalError | None:
        """One attempt at BEGIN IMMEDIATE (self.lock held, no transaction open): None if it began, the error if
        another connection holds the file's write lock (how long SQLite waited is the connection's busy timeout)."""
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return exc
        return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """The body of a transaction BEGIN IMMEDIATE opened: commit it, or roll it back on any error."""
        try:
            yield
        except BaseException:
            self._roll_back()
            raise
        self._commit()

    def _roll_back(self) -> None:
        """End the open transaction after an error in it: SQLite may have rolled back already (e.g. on corruption),
        so only if one is still open, keeping the error that ended it as the cause."""
        conn = self.db.conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _commit(self) -> None:
        """Commit the open transaction; never leave the connection inside one when the commit fails (e.g. busy)."""
        try:
            self.db.conn.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise

    @contextlib.contextmanager
    def _pragma_for_now(self, setting: str, restored: str) -> Iterator[None]:
        """`PRAGMA setting` for the block, then `PRAGMA restored` (self.lock held)."""
        conn = self.db.conn
        conn.execute(f"PRAGMA {setting}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA {restored}")

    def _without_busy_wait(self) -> contextlib.AbstractContextManager[None]:
        """SQLite answers "database is locked" at once instead of sleeping in its busy handler."""
        return self._pragma_for_now("busy_timeout=0", self._busy_pragma.removeprefix("PRAGMA "))

    def _without_autocheckpoint(self) -> contextlib.AbstractContextManager[None]:
        """Commits leave the WAL checkpoint (two fsyncs) to the next ordinary commit."""
        return self._pragma_for_now("wal_autocheckpoint=0", f"wal_autocheckpoint={self._checkpoint_pages}")

    def try_write(self, work: Callable[[], object], *, wait_for_threads: bool = False) -> bool:
        """Run `work` in a write transaction only if nothing has to be waited for; False means nothing was written.

        For callers on an event loop, which must never block: the store's lock is taken only if free, the file's
        write lock only with a zero busy timeout (another process or a CLI holding it gives False at once), and
        this commit runs without WAL auto-checkpoint, whose two fsyncs are left to the next ordinary commit.
        `wait_for_threads`: wait for the store's lock (other threads hold it briefly), never for another process."""
        if not self.lock.acquire(blocking=wait_for_threads):
            return False
        try:
            conn = self.db.conn
            if conn.in_transaction:
                return False
            # for the whole transaction: its COMMIT must not wait either
            with self._without_busy_wait(), self._without_autocheckpoint():
                try:
                    if self._begin_immediate() is not None:
                        return False  # another connection holds the file's write lock
                    with self._transaction():
                        self._check_same_file()
                        work()
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    return False
                except FileReplaced:  # left to an ordinary write, which says so (review: best-effort callers broke)
                    return False
            return True
        finally:
            self.lock.release()

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits: the cache-invalidation signal."""
        with self.lock:
            return int(self.db.conn.execute("PRAGMA data_version").fetchone()[0])
