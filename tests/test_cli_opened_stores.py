"""The handbooks a CLI command opened belong to its dispatch (server/opened_stores.py). Review findings on the first
registry, one process-wide list: a handler called directly (tests call commands.handbook_export/import across many
examples) kept every store it opened open until a later main(); two dispatches on two threads closed each other's
handbooks; and one close() that raised hid the command's own error and left the rest open. A leftover `-wal` file
beside a handbook means an open connection (SQLite removes it when the last one closes)."""

from __future__ import annotations

import argparse
import gc
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from skillorchestra.handbook.errors import HandbookError
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.server import commands
from skillorchestra.server.cli import Parser, _dispatch, main
from skillorchestra.server.opened_stores import closing_opened, opening, registered

Handler = Callable[[argparse.Namespace], int]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "h.db"
    with pytest.raises(SystemExit) as exited:
        main(["handbook", "import", "--example", "--db", str(path)])
    assert exited.value.code == 0
    gc.collect()
    assert not wal(path).exists()
    return path


def wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def dispatch(handler: Handler) -> int:
    """cli's own dispatch (error reporting, closing) around a handler of the test's."""

    def build() -> argparse.ArgumentParser:
        parser = Parser(prog="skillorchestra-test")
        parser.set_defaults(handler=handler)
        return parser

    return _dispatch([], build)


class FailingClose:
    """A handle whose close fails, as a close on a failing disk can."""

    def __init__(self) -> None:
        self.tried = False

    def close(self) -> None:
        self.tried = True
        raise OSError("close failed: disk I/O error")


def test_a_handler_called_directly_leaves_its_handbook_to_its_caller(db: Path, no_collection: None) -> None:
    exported = db.parent / "out.json"
    for _ in range(3):  # as a property test calls it, example after example
        assert commands.handbook_export(argparse.Namespace(db=db, file=str(exported))) == 0
    assert exported.read_text().startswith("{")
    assert registered() == 0  # no dispatch running: nothing kept for one
    # the caller dropped the stores: collected, closed, the WAL file gone. Python 3.13 warns of each such connection,
    # and a warning shown under -W default keeps its source (the connection) alive with pytest's record of it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert not wal(db).exists()


def test_a_store_opened_outside_a_dispatch_survives_another_threads_command(db: Path, tmp_path: Path) -> None:
    mine = commands.existing_store(argparse.Namespace(db=db))
    try:
        other = tmp_path / "other.db"
        codes: list[object] = []

        def command() -> None:
            with pytest.raises(SystemExit) as exited:
                main(["handbook", "import", "--example", "--db", str(other)])
            codes.append(exited.value.code)

        worker = threading.Thread(target=command)
        worker.start()
        worker.join()
        assert codes == [0]
        assert mine.document().agents  # still open: the other command closed only its own
    finally:
        mine.close()


def test_two_dispatches_on_two_threads_close_only_their_own(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    HandbookStore(other).close()
    opened = threading.Event()
    other_done = threading.Event()
    seen: list[int] = []

    def slow(args: argparse.Namespace) -> int:
        store = commands.existing_store(argparse.Namespace(db=db))
        opened.set()
        assert other_done.wait(30)
        seen.append(len(store.document().agents))  # raises if the other dispatch closed it
        return 0

    def quick(args: argparse.Namespace) -> int:
        commands.existing_store(argparse.Namespace(db=other))
        return 0

    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(dispatch(slow)))
    worker.start()
    assert opened.wait(30)
    assert dispatch(quick) == 0
    other_done.set()
    worker.join()
    assert codes == [0]
    assert seen and seen[0] > 0
    assert registered() == 0


def test_a_failing_command_still_closes_its_handbooks_and_reports_its_own_error(
    db: Path, tmp_path: Path, no_collection: None, capsys: pytest.CaptureFixture[str]
) -> None:
    second = tmp_path / "second.db"
    HandbookStore(second).close()
    failing = FailingClose()
    stores: list[HandbookStore] = []

    def broken(args: argparse.Namespace) -> int:
        stores.append(commands.existing_store(argparse.Namespace(db=db)))
        opening(failing)  # closed between the two stores (newest first): its failure must not stop the first
        stores.append(commands.existing_store(argparse.Namespace(db=second)))
        stores[0].document()  # a read: the WAL file exists until the close
        raise HandbookError("the command's own trouble")

    assert dispatch(broken) == 2
    err = capsys.readouterr().err
    assert "error: the command's own trouble" in err
    assert "disk I/O error" not in err.splitlines()[-1]
    assert failing.tried
    assert all(store.closed for store in stores)
    assert not wal(db).exists() and not wal(second).exists()
    assert registered() == 0


def test_a_close_that_fails_after_a_clean_command_is_reported_and_the_rest_are_closed(
    db: Path, no_collection: None, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = FailingClose()
    stores: list[HandbookStore] = []

    def clean(args: argparse.Namespace) -> int:
        stores.append(commands.existing_store(argparse.Namespace(db=db)))
        opening(failing)
        return 0

    assert dispatch(clean) == 2  # the close's failure is the command's error: exit 2, one line
    assert "error: close failed: disk I/O error" in capsys.readouterr().err
    assert stores[0].closed and not wal(db).exists()


def test_the_registry_is_empty_after_a_dispatch_and_outside_one(db: Path) -> None:
    with closing_opened():
        commands.existing_store(argparse.Namespace(db=db))
        commands.existing_store(argparse.Namespace(db=db))
        assert registered() == 2
    assert registered() == 0
    assert not wal(db).exists()
