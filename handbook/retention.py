"""Retention: `skillorchestra handbook prune --before DATE`.

The event log and the decision/outcome tables grow with every routed step, and decisions may hold step texts.
Pruning folds the live version's events older than DATE into a new version's snapshot (the live state does not
change, and `rebuild` still reproduces it), re-appends the newer events against that version, and deletes the
decisions and outcomes older than DATE, all in one transaction. A decision still awaiting its report stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.store import HandbookStore


@dataclass(frozen=True)
class PruneResult:
    cutoff: float
    old_version: int
    new_version: int | None  # None: no event was old enough, the live version stays
    folded_events: int
    moved_events: int
    deleted_decisions: int
    deleted_outcomes: int
    free_bytes: int = 0  # left in the file for reuse: `vacuum` gives it back
    vacuumed_bytes: int | None = None  # what the file shrank by (None: not vacuumed)
    vacuum_pending: bool = False  # vacuumed, but a reader kept the pages in the WAL until a later checkpoint

    def summary(self) -> str:
        when = datetime.fromtimestamp(self.cutoff, UTC).isoformat(timespec="seconds")
        if self.new_version is None:
            head = f"no event of version {self.old_version} before {when}; version unchanged"
        else:
            head = (
                f"version {self.new_version} (from {self.old_version}): folded {self.folded_events} events before "
                f"{when} into its snapshot, moved {self.moved_events} newer events"
            )
        deleted = f"deleted {self.deleted_decisions} decisions and {self.deleted_outcomes} outcomes"
        if self.deleted_outcomes:  # the posteriors keep their evidence; the step texts behind it are gone
            deleted += " (`learn --data events` and learn_handbook learn from these: they no longer see them)"
        if self.vacuum_pending:
            space = "vacuumed, but another connection was reading: the space returns at its next checkpoint"
        elif self.vacuumed_bytes is not None:
            space = f"vacuumed: the file shrank by {_megabytes(self.vacuumed_bytes)}"
        else:
            space = f"{_megabytes(self.free_bytes)} of free pages stay in the file for reuse (--vacuum gives them back)"
        return f"{head}; {deleted}; {space}"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def parse_cutoff(text: str, field: str = "--before") -> float:
    """An ISO date (midnight UTC) or date-time (UTC unless it names its offset) as a POSIX timestamp."""
    try:
        moment = datetime.fromisoformat(text.strip())  # a bare date is midnight
    except ValueError:
        raise InvalidInput(field, text, "an ISO date (2026-01-31) or date-time (2026-01-31T12:00:00+00:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def prune(store: HandbookStore, cutoff: float, *, now: float | None = None, vacuum: bool = False) -> PruneResult:
    """Fold, move and delete as the module says, in one write transaction (all or nothing); then, if asked,
    vacuum: deleted rows only free pages inside the file (340,000 decisions left 1.65 GB of them)."""
    now = time.time() if now is None else now
    when = datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds")
    with store.write():
        old_version = store.current_version()
        new_version, folded, moved = store.fold_events_before(cutoff, summary=f"pruned: events before {when} folded")
        decisions, outcomes = store.delete_decisions_before(cutoff, now)
    free, vacuumed, pending = store.free_bytes(), None, False
    if vacuum:
        size = _file_bytes(store.path)
        pending = not store.vacuum()
        free, vacuumed = store.free_bytes(), size - _file_bytes(store.path)
    return PruneResult(
        cutoff=cutoff,
        old_version=old_version,
        new_version=new_version,
        folded_events=folded,
        moved_events=moved,
        deleted_decisions=decisions,
        deleted_outcomes=outcomes,
        free_bytes=free,
        vacuumed_bytes=vacuumed,
        vacuum_pending=pending,
    )


def _file_bytes(path: Path) -> int:
    """The database with its write-ahead log (what the disk holds for it)."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
