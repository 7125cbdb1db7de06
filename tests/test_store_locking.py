"""The store's write lock against another connection's (a CLI import, another server): a write waiting for the
file's lock must not hold the process's connection lock, or every read of the process (other clients' consults,
lists, resources) queues behind it for up to the busy timeout. Also: a wait past the busy timeout raises what it
did before and writes nothing; nested writes and try_write behave as before; a file a newer skillorchestra wrote
is refused before anything is written."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.models import HandbookDocument, Mode
from skillorchestra.handbook.schema import schema_version
from skillorchestra.handbook.sqlite_file import busy_text
from skillorchestra.handbook.store import HandbookStore

DOCUMENT = HandbookDocument(modes=[Mode(id="code"), Mode(id="search")])
GUARD_S = 30.0  # how long a test waits for an event before failing: never reached when the code is right
Hold = Callable[[], sqlite3.Connection]  # the `hold` fixture: takes the file's write lock in another connection
LATE = Mode(id="late", description="written after the other process let go").model_dump(mode="json")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "h.db"
    store = HandbookStore(path)
    store.create_version(DOCUMENT, source="test")
    store.close()
    return path


@pytest.fixture
def hold(db: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Another connection to the file taking its write lock, as a CLI import or another server's write does (after
    the test opened its store: opening migrates, in a write transaction)."""
    conns: list[sqlite3.Connection] = []

    def take() -> sqlite3.Connection:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conns.append(conn)
        conn.execute("BEGIN IMMEDIATE")
        return conn

    yield take
    for conn in conns:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def modes_on_disk(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM modes ORDER BY id")]
    finally:
        conn.close()


def lock_is_free(store: HandbookStore) -> bool:
    """Whether another thread could take the store's lock now (the calling thread may hold an RLock re-entrantly)."""
    got: list[bool] = []

    def probe() -> None:
        took = store.lock.acquire(blocking=False)
        if took:
            store.lock.release()
        got.append(took)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got == [True]


def read_while_write_waits(
    store: HandbookStore, holder: sqlite3.Connection, write: Callable[[], Any], read: Callable[[], Any], what: str
) -> tuple[Any, Any, bool]:
    """Run `write` on a thread until its BEGIN IMMEDIATE waits on `holder` (another process's lock), then `read` on
    another thread, which must finish meanwhile. Then the holder lets go. Returns the write's result (or exception),
    the read's result, and whether the write was still waiting when the read finished."""
    attempted, written, read_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def trace(sql: str) -> None:  # the writer thread's BEGIN IMMEDIATE has started: it now waits on `holder`
        if sql == "BEGIN IMMEDIATE" and threading.current_thread() is writer:
            attempted.set()

    def run_write() -> None:
        try:
            results["write"] = write()
        except Exception as exc:  # reported to the caller
            results["write"] = exc
        finally:
            written.set()

    def run_read() -> None:
        results["read"] = read()
        results["waiting"] = not written.is_set()
        read_done.set()

    writer, reader = threading.Thread(target=run_write), threading.Thread(target=run_read)
    store.db.conn.set_trace_callback(trace)
    try:
        writer.start()
        assert attempted.wait(GUARD_S)
        reader.start()
        assert read_done.wait(GUARD_S), f"{what} waited for the blocked write"
        waiting = results["waiting"] and not written.is_set()
    finally:
        holder.execute("ROLLBACK")  # the other process lets go: the waiting write goes through
        assert written.wait(GUARD_S)
        writer.join()
        reader.join()
        store.db.conn.set_trace_callback(None)
    return results["write"], results["read"], waiting


def test_reads_go_on_while_a_write_waits_for_another_connections_lock(db: Path, hold: Hold) -> None:
    store = HandbookStore(db, busy_timeout_s=120.0)  # the writer cannot give up during the test on its own

    def write() -> str:
        store.apply("upsert_mode", LATE)
        return "written"

    # the old store held its connection lock while SQLite's busy handler waited: the read queued behind it
    written, (count, decision, modes), waiting = read_while_write_waits(
        store,
        hold(),
        write,
        lambda: (store.counts()["modes"], store.decision("no-such-id"), store.document().modes),
        "a read of the same store",
    )
    assert waiting
    assert count == 2 and decision is None and [m.id for m in modes] == ["code", "search"]
    assert written == "written"
    assert modes_on_disk(db) == ["code", "late", "search"]
    assert store.modes()[1].description == LATE["description"] and lock_is_free(store)
    store.close()


def test_counts_read_beside_a_long_transaction_and_see_only_what_it_committed(db: Path) -> None:
    """handbook://stats counts every decision: under the store's lock that scan stalled every route and record
    (1.9 s at 340,000 decisions); on a connection of its own it waits for nothing."""
    store = HandbookStore(db)
    inside, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with store.write():
            store.apply("upsert_mode", LATE)
            inside.set()
            release.wait(GUARD_S)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert inside.wait(GUARD_S)
    seen: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: seen.update(counts=store.counts(), routed=store.routing_counts()))
    reader.start()
    reader.join(GUARD_S)
    finished = not reader.is_alive()
    release.set()
    writer.join()
    reader.join()
    assert finished and seen["counts"]["modes"] == 2 and seen["routed"] == {}
    assert store.counts()["modes"] == 3 and lock_is_free(store)
    store.close()


def test_a_wait_past_the_busy_timeout_raises_and_writes_nothing(db: Path, hold: Hold) -> None:
    store = HandbookStore(db, busy_timeout_s=0.05)
    holder = hold()
    ran: list[str] = []
    with pytest.raises(sqlite3.OperationalError, match="^database is locked$"):
        with store.write():
            ran.append("body")
    with pytest.raises(sqlite3.OperationalError, match="^database is locked$") as caught:
        store.apply("upsert_mode", LATE)
    told = busy_text(caught.value, db)  # what the CLI and a failed learning job say (QA: the bare message)
    assert told is not None and str(db) in told and "locked by another process" in told
    assert "nothing was written" in told and busy_text(sqlite3.OperationalError("no such table: x"), db) is None
    assert ran == [] and lock_is_free(store) and not store.db.conn.in_transaction
    holder.execute("ROLLBACK")
    assert modes_on_disk(db) == ["code", "search"]
    store.apply("upsert_mode", LATE)  # the store is usable again once the other connection let go
    assert modes_on_disk(db) == ["code", "late", "search"]
    store.close()


def test_a_nested_write_belongs_to_the_outer_transaction(db: Path) -> None:
    store = HandbookStore(db)
    with pytest.raises(RuntimeError, match="after the inner write"):
        with store.write():
            store.apply("upsert_mode", LATE)  # a nested write: commits nothing of its own
            raise RuntimeError("after the inner write")
    assert modes_on_disk(db) == ["code", "search"] and lock_is_free(store)
    with store.write():
        store.apply("upsert_mode", LATE)
    assert modes_on_disk(db) == ["code", "late", "search"]
    store.close()


def test_try_write_never_waits_and_keeps_the_busy_timeout(db: Path, hold: Hold) -> None:
    store = HandbookStore(db, busy_timeout_s=120.0)  # a try_write that waited would hang the test, not pass it
    holder = hold()
    ran: list[str] = []
    assert store.try_write(lambda: ran.append("work")) is False
    assert ran == [] and lock_is_free(store)
    holder.execute("ROLLBACK")
    assert store.try_write(lambda: store.apply("upsert_mode", LATE)) is True
    assert modes_on_disk(db) == ["code", "late", "search"]
    assert store.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 120_000
    store.close()


def add_applied_migration(db: Path, migration_set: str, name: str) -> None:
    """What a newer build leaves in the file: a migration of our set recorded as applied."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, '2027-01-01')",
            [migration_set, name],
        )
    conn.close()


def test_a_file_a_newer_skillorchestra_wrote_is_refused_before_anything_is_written(db: Path) -> None:
    add_applied_migration(db, "skillorchestra", "m099_future")
    before = db.read_bytes()
    with pytest.raises(InvalidInput) as refused:
        HandbookStore(db)
    assert refused.value.field == "db" and refused.value.value == str(db)
    assert refused.value.expected == (
        f"a handbook this version can use (it was written by a newer skillorchestra: handbook schema "
        f"{schema_version() + 1}, migrations m099_future unknown to this release, which reads schema "
        f"{schema_version()} at most (see --version); upgrade skillorchestra)"
    )
    assert db.read_bytes() == before


def test_migrations_of_another_set_in_the_file_are_not_ours_to_refuse(db: Path) -> None:
    add_applied_migration(db, "another-tool", "m099_future")
    store = HandbookStore(db)
    assert [m.id for m in store.modes()] == ["code", "search"]
    store.close()


def test_a_consult_goes_on_while_a_record_waits_for_another_connections_lock(db: Path, hold: Hold) -> None:
    """The service level of the test above: a record_outcome behind a CLI import held the handbook's own lock,
    which every consult and route_step takes to read the routing arrays (found by the final review)."""
    from skillorchestra.handbook.models import Agent
    from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest

    store = HandbookStore(db, busy_timeout_s=120.0)
    book = Handbook(store)
    book.upsert_agent(Agent(id="a1"))
    book.upsert_agent(Agent(id="a2"))
    decision = book.route(RouteRequest(text="write a parser"))
    book.consult("warm the routing arrays")
    evidence_before = float(book.arrays().evidence.sum())
    record, consult, waiting = read_while_write_waits(
        store,
        hold(),
        lambda: book.record(OutcomeReport(decision_id=decision.decision_id, success=True)),
        lambda: book.consult("another client's step"),
        "a consult",
    )
    assert waiting and consult.agents
    assert record.applied and record.updated
    assert float(book.arrays().evidence.sum()) > evidence_before  # the next read sees it: patched or rebuilt
    store.close()


def returned_within_guard(work: Callable[[], object]) -> list[BaseException | object]:
    """Run `work` on a thread; what it returned or raised, once it finished (the guard is never reached when
    the code is right: a wait the code should not make is the failure)."""
    got: list[BaseException | object] = []

    def run() -> None:
        try:
            got.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), "it waited past its deadline"
    return got


def test_a_write_waits_for_another_connection_only_until_its_threads_deadline(db: Path, hold: Hold) -> None:
    """waiting_until: a call that already spent its time queued gives up at once, not after another busy timeout."""
    import time

    store = HandbookStore(db, busy_timeout_s=120.0)
    holder = hold()

    def late_write() -> None:
        with store.waiting_until(time.monotonic() - 1.0):
            store.apply("upsert_mode", LATE)

    [raised] = returned_within_guard(late_write)
    assert isinstance(raised, sqlite3.OperationalError) and str(raised) == "database is locked"
    holder.execute("ROLLBACK")
    assert modes_on_disk(db) == ["code", "search"]
    store.apply("upsert_mode", LATE)  # the deadline was the call's own: the next write waits as usual
    assert modes_on_disk(db) == ["code", "late", "search"]
    store.close()


def test_opening_a_migrated_file_reads_it_without_waiting_for_another_connections_lock(db: Path, hold: Hold) -> None:
    """QA: `handbook show` (and a server starting) behind a long import waited out the busy timeout in the write
    probe and the migration check, then failed saying nothing was written, though it only meant to read."""
    holder = hold()
    [store] = returned_within_guard(lambda: HandbookStore(db, busy_timeout_s=120.0))
    assert isinstance(store, HandbookStore) and store.writable
    assert [v["source"] for v in store.versions()][-1] == "test"
    holder.execute("ROLLBACK")
    store.apply("upsert_mode", LATE)
    assert modes_on_disk(db) == ["code", "late", "search"]
    store.close()


def test_a_new_file_another_process_is_filling_is_served_without_the_example(tmp_path: Path) -> None:
    """Review: a server starting on a new file while a learn or an import held its write lock waited the busy
    timeout to seed the example, then failed to start. It starts without it: that process is filling the file."""
    from skillorchestra.handbook.example import seed_example_if_new

    path = tmp_path / "new.db"
    HandbookStore(path).close()  # created and migrated: pristine
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    store = HandbookStore(path, busy_timeout_s=120.0)
    try:
        assert returned_within_guard(lambda: seed_example_if_new(store)) == [False]
        assert [v["source"] for v in store.versions()] == ["init"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert seed_example_if_new(store) and [v["source"] for v in store.versions()] == ["init", "import"]
    assert not seed_example_if_new(store)  # seeded once
    store.close()


def test_a_record_queued_behind_this_processs_records_gives_up_at_its_own_busy_timeout(db: Path) -> None:
    """QA: with a CLI holding the file's lock, concurrent record_outcome calls queued on the record lock, each
    starting its 30 s wait when the one before gave up: the fourth failed after 120 s, past its client's timeout,
    and was written later all the same. Here the record lock is held by "another record" that never lets go: the
    queued record must give up busy within its own busy timeout, writing nothing."""
    from skillorchestra.handbook.models import Agent
    from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest

    store = HandbookStore(db, busy_timeout_s=0.2)
    book = Handbook(store)
    book.upsert_agent(Agent(id="a1"))
    decision = book.route(RouteRequest(text="write a parser"))
    with book._record_lock:  # another record of this process, stuck behind another process's lock
        [raised] = returned_within_guard(lambda: book.record(OutcomeReport(decision_id=decision.decision_id, reward=1)))
    assert isinstance(raised, sqlite3.OperationalError) and busy_text(raised, db) is not None
    assert store.outcome(decision.decision_id) is None
    assert book.record(OutcomeReport(decision_id=decision.decision_id, reward=1)).applied  # and it can be retried
    store.close()


def test_servers_started_at_once_on_a_new_file_seed_the_example_once(tmp_path: Path) -> None:
    """QA: servers started together each saw a pristine file and seeded it (versions 2, 3 and 4 all examples)."""
    import threading

    from skillorchestra.handbook.example import seed_example_if_new

    db = tmp_path / "new.db"
    HandbookStore(db).close()
    stores = [HandbookStore(db) for _ in range(4)]
    start = threading.Barrier(len(stores))
    seeded: list[bool] = []

    def seed(store: HandbookStore) -> None:
        start.wait()
        seeded.append(seed_example_if_new(store))

    threads = [threading.Thread(target=seed, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(seeded) == [False, False, False, True]
        assert [v["version"] for v in stores[0].versions()] == [1, 2]
    finally:
        for store in stores:
            store.close()
