"""A handbook file that fails itself (read-only, not a file, full disk, damaged): refused at start naming the file,
or told to the model and the operator with what to do, and nothing half-written (found by a crash-safety QA pass)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from raw_jsonrpc import OPENING, tool_call

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.example import seed_example_if_new
from skillorchestra.handbook.models import Agent, HandbookDocument, Mode, Skill
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.sqlite_file import SqliteFile
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.tools.common import tool_error

BIN = Path(sys.executable).parent
DOCUMENT = HandbookDocument(
    modes=[Mode(id="answer")],
    skills=[Skill(id="math", mode="answer", description="arithmetic and algebra word problems")],
    agents=[Agent(id="a", input_per_mtok=1.0, output_per_mtok=2.0), Agent(id="b", input_per_mtok=0.1)],
)


def cli(*args: str, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # a full disk, as a file-size limit makes it without root: writes get EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    return subprocess.run(
        [str(BIN / "skillorchestra"), *args], capture_output=True, text=True, timeout=120, preexec_fn=limit
    )


def table_contents(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = ("decisions", "outcomes", "events", "competence", "cost_stats")
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}


@pytest.fixture
def read_only_file(tmp_path: Path) -> Iterator[Path]:
    """A handbook file this process may read but not write (root ignores file modes: an immutable file instead)."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    seed_example_if_new(store)
    store.close()
    if os.geteuid() != 0:
        db.chmod(0o444)
        yield db
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is unavailable: no way to make a file read-only here")
    try:
        yield db
    finally:
        subprocess.run([chattr, "-i", str(db)], check=True)


def test_a_file_this_process_cannot_write_is_read_but_not_served(read_only_file: Path) -> None:
    """SQLite opens it read-only without a word: the server started, and every write tool failed later. Reading
    it (show, export of a read-only backup) still works; writing says the file is read-only."""
    store = HandbookStore(read_only_file)
    assert not store.writable and store.versions()
    store.close()
    assert cli("--db", str(read_only_file), "handbook", "show").returncode == 0
    done = cli("--db", str(read_only_file), "handbook", "import", "--example")
    assert done.returncode == 2 and f"--db {read_only_file}: the handbook file is read-only" in done.stderr
    traces = read_only_file.parent / "traces.jsonl"
    traces.write_text(
        "".join(
            json.dumps({"id": str(i), "query": f"question {i}", "outcomes": {"a": {"score": i % 2}}}) + "\n"
            for i in range(8)
        ),
        encoding="utf-8",
    )
    learned = cli("--db", str(read_only_file), "learn", "--data", str(traces))
    # refused before learning (QA: 23 s of work, then "nothing was written" as the result was to be kept)
    assert learned.returncode == 2 and learned.stderr.count("\n") == 1, learned.stderr
    assert (
        f"--db='{read_only_file}': expected a handbook file this process can write (it is read-only)" in learned.stderr
    )
    served = subprocess.run(
        [str(BIN / "skillorchestra-mcp"), "--db", str(read_only_file)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert served.returncode == 2 and served.stdout == ""
    assert f"db='{read_only_file}': expected a handbook file this process can write (it is read-only)" in served.stderr


def test_opening_a_file_leaves_nothing_for_other_processes_to_reload(tmp_path: Path) -> None:
    """The write that proves the file writable is rolled back: a CLI `handbook show` must not make every server
    sharing the file re-read it."""
    db = tmp_path / "h.db"
    HandbookStore(db).close()
    with contextlib.closing(sqlite3.connect(db)) as other:
        before = other.execute("PRAGMA data_version").fetchone()
        HandbookStore(db).close()
        assert other.execute("PRAGMA data_version").fetchone() == before


def test_a_device_is_not_taken_for_a_handbook_file() -> None:
    with pytest.raises(InvalidInput, match="not a regular file"):
        SqliteFile("/dev/null")
    done = cli("--db", "/dev/null", "handbook", "show")
    assert done.returncode == 2 and "'/dev/null', which is not a regular file" in done.stderr


def test_a_full_disk_is_told_to_the_model_and_nothing_is_written(tmp_path: Path) -> None:
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(DOCUMENT, source="test")
    book = Handbook(store)
    decision = book.route(RouteRequest(text="what is 12 * 7"))
    before = table_contents(store.path)
    (pages,) = store.db.conn.execute("PRAGMA page_count").fetchone()
    store.db.conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: the disk is full
    with pytest.raises(sqlite3.OperationalError) as full:
        book.route(RouteRequest(text="a long step " * 2000))  # its text needs new pages
    error = tool_error(full.value)
    assert error is not None and "disk holding the handbook file is full: nothing was written" in str(error)
    assert table_contents(store.path) == before
    store.db.conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: the server goes on
    assert book.record(OutcomeReport(decision_id=decision.decision_id, success=True)).updated
    store.close()


def test_a_full_disk_at_start_names_the_file(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    done = cli("--db", str(db), "handbook", "import", "--example", fsize=50_000)
    assert done.returncode == 2
    assert f"db='{db}': expected a database file this process can create, open and write" in done.stderr


def damage_table(db: Path, table: str) -> None:
    """Zero the table's first page, as a bad disk or a torn copy would (the file closed and checkpointed)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\0" * page_size)


@pytest.mark.anyio
async def test_a_damaged_file_is_said_to_be_damaged_to_the_model_and_by_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(DOCUMENT, source="test")
    store.close()
    damage_table(db, "agents")
    params = StdioServerParameters(
        command=str(BIN / "skillorchestra-mcp"), args=["--db", str(db)], env={"SKILLORCHESTRA_MATCHER": "lexical"}
    )
    async with Client(params) as client:
        result = await client.call_tool("route_step", {"text": "what is 12 * 7"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "the handbook file is damaged (database disk image is malformed)" in text and "handbook import" in text
    done = cli("--db", str(db), "handbook", "show")
    assert done.returncode == 2 and f"--db {db}: the handbook file is damaged" in done.stderr


def test_rebuild_repairs_a_damaged_skill_index(tmp_path: Path) -> None:
    """The skill index is derived from the skills; clearing the skills fired its triggers, which failed on the
    damaged index before it could be rebuilt."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    seed_example_if_new(store)
    found = store.search_skills('"python"', None, 3)
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE skills_fts_data SET block = x'0102030405' WHERE id > 10")
    store = HandbookStore(db)
    with pytest.raises(sqlite3.DatabaseError):
        store.search_skills('"python"', None, 3)
    store.rebuild()
    assert store.search_skills('"python"', None, 3) == found
    store.close()


def test_the_operator_reads_of_a_damaged_file_on_stderr_at_the_default_log_level(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(DOCUMENT, source="test")
    store.close()
    damage_table(db, "agents")
    messages = [*OPENING, tool_call(2, "route_step", {"text": "x"})]
    served = subprocess.run(
        [str(BIN / "skillorchestra-mcp"), "--db", str(db), "--matcher", "lexical"],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 0  # the model's side of it: test_a_damaged_file_is_said_to_be_damaged...
    assert "WARNING skillorchestra: the handbook file is damaged (database disk image is malformed)" in served.stderr
    told = [line for line in served.stderr.splitlines() if "damaged" in line and "warm-up" not in line]
    assert told and all(line.endswith(f"({db})") for line in told), served.stderr  # which of the servers' files


def _foreign(path: Path, migration_set: str | None = None) -> Path:
    """Another program's SQLite file: a table of its own, perhaps sqlite-utils migrations of another set."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
        if migration_set is not None:
            conn.execute("CREATE TABLE _sqlite_migrations (id INTEGER PRIMARY KEY, migration_set TEXT, name TEXT)")
            conn.execute("INSERT INTO _sqlite_migrations (migration_set, name) VALUES (?, 'm001')", [migration_set])
    return path


def _tables_and_mode(path: Path) -> tuple[list[str], str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
        return tables, conn.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.mark.parametrize("migration_set", [None, "someone-elses-app"])
def test_another_programs_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path, migration_set: str | None) -> None:
    path = _foreign(tmp_path / "crm.db", migration_set)
    before = _tables_and_mode(path)
    result = cli("handbook", "versions", "--db", str(path))  # a read-only command used to add 30 tables to it
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: db='{path}': expected a skillorchestra handbook or a new file" in result.stderr
    assert "another program's: it holds the tables " in result.stderr and "customers" in result.stderr
    with pytest.raises(InvalidInput, match="nothing was written to it"):
        HandbookStore(path)
    assert _tables_and_mode(path) == before and before[1] == "delete"  # not even switched to WAL
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # an empty SQLite file (0 bytes) still becomes a handbook
    HandbookStore(empty).close()
    assert "meta" in _tables_and_mode(empty)[0]


def test_a_new_handbook_file_and_its_folder_are_its_owners_alone(tmp_path: Path) -> None:
    """The file holds step texts, decisions and connection settings: it was world-readable under umask 022 (QA)."""
    old_umask = os.umask(0o022)
    try:
        store = HandbookStore(tmp_path / "data" / "handbook.db")
        store.apply("upsert_mode", {"id": "answer"})  # a write: the WAL file exists while the store is open
        wal = tmp_path / "data" / "handbook.db-wal"
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "data").iterdir()}
        store.close()
    finally:
        os.umask(old_umask)
    assert wal.name in modes and set(modes.values()) == {0o600}, modes
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    existing = tmp_path / "shared.db"
    existing.touch(mode=0o640)  # a file the user made: its mode is theirs
    HandbookStore(existing).close()
    assert existing.stat().st_mode & 0o777 == 0o640


def test_a_command_that_reads_a_handbook_refuses_an_empty_file(tmp_path: Path) -> None:
    """An empty file is a valid empty SQLite database: `handbook show` made a handbook inside it (QA)."""
    empty = tmp_path / "empty.db"
    empty.touch()
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "skillorchestra"), "handbook", "show", "--db", str(empty)],
        capture_output=True,
        text=True,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
    )
    assert shown.returncode == 2 and "no handbook at" in shown.stderr and empty.stat().st_size == 0


def test_a_file_moved_or_replaced_under_an_open_store_is_not_written(tmp_path: Path) -> None:
    """QA: records acknowledged into a moved or deleted file were lost, and a copy restored over a running
    server's file was damaged by the -wal the server kept writing. A write checks the path still names its file."""
    from skillorchestra.handbook.errors import FileReplaced

    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(DOCUMENT, source="import")
    book = Handbook(store)
    decision = book.route(RouteRequest(text="what is 2 + 2?"))
    moved = tmp_path / "moved.db"
    db.rename(moved)
    with pytest.raises(FileReplaced, match="was moved, removed or replaced after this process opened it") as caught:
        book.record(OutcomeReport(decision_id=decision.decision_id, reward=1))
    assert str(db) in str(caught.value) and "nothing was written" in str(caught.value)
    assert tool_error(caught.value) is not None  # the model reads it as a tool error, not an internal error
    with pytest.raises(FileReplaced):
        book.route(RouteRequest(text="and 3 + 3?"))  # routing writes its decision: refused as well
    assert not store.try_write(lambda: None)  # a best-effort write is skipped, never raised (review)
    restored = HandbookStore(db)  # a backup put in its place (here a new handbook)
    restored.create_version(DOCUMENT, source="import")
    before = table_contents(db)
    with pytest.raises(FileReplaced):
        store.apply("upsert_mode", Mode(id="late").model_dump(mode="json"))
    assert table_contents(db) == before
    restored.close()
    store.close()
    for path in (db, moved):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), path
    assert table_contents(db) == before  # (what the moved file held in its -wal went with that path: SQLite's rule)
