"""The routing arrays a Handbook keeps in memory, and when they still hold.

Deriving them reads the whole handbook (seconds at 200 agents x 2,000 skills), so they are derived once and kept:
an edit of texts alone leaves them current, a recorded outcome patches a copy of their evidence (derived on the
next read), and SQLite's data_version tells when another process (the CLI, another server) committed. Its state
and lock are its own; the Handbook's record lock (recording.py) stays outside.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

from skillorchestra.handbook.arrays import HandbookArrays, Patch, build_arrays
from skillorchestra.handbook.store import HandbookStore, OutcomeEffect


class ArraysCache:
    def __init__(self, store: HandbookStore, kappa: float) -> None:
        self.store = store
        self.kappa = kappa
        self._lock = threading.RLock()
        # generations of the store made by edits of texts alone (see EditMixin._edit): no derived number changed
        self._texts_only: set[int] = set()
        self._arrays: HandbookArrays | None = None
        self._arrays_key: tuple[int, int] | None = None
        # outcomes recorded since the arrays were derived, applied to a copy of their raw evidence: derived on
        # the next read, so a burst of records derives the posteriors once instead of once per record
        self._pending: Patch | None = None
        self._pending_key: tuple[int, int] | None = None
        # the file's data_version at the last read: whether another process committed since
        self._read_data_version: int | None = None

    def read(self) -> HandbookArrays:
        """The arrays of the file as it is now: the kept ones, the queued outcomes' patch, or derived again."""
        with self._lock:
            key = (self.store.data_version(), self.store.generation)
            if self._pending is not None and self._numbers_unchanged(self._pending_key, key):
                self._arrays, self._arrays_key = self._pending.derived(), key
            self._pending = None
            if self._arrays is None or not self._numbers_unchanged(self._arrays_key, key):
                self._arrays = self._derive()
            self._arrays_key, self._read_data_version = key, key[0]
            self._forget_texts_only(key[1])
            return self._arrays

    def _forget_texts_only(self, generation: int) -> None:
        """Drop the noted generations up to `generation`: the arrays are current there, and every later check
        starts after it (the set grew by one per edit of texts for the life of the process: memory QA). In place:
        an edit may note a generation meanwhile (note_texts_only takes no lock)."""
        if self._texts_only:
            self._texts_only.difference_update([g for g in list(self._texts_only) if g <= generation])

    def note_texts_only(self, generation: int) -> None:
        """The store's `generation` came of an edit of texts alone: the arrays derived before it outlive it. Noted
        without the lock: an edit runs holding the store's lock, and taking this one then would invert the order
        every read takes them in."""
        self._texts_only.add(generation)

    def patched(self, effect: OutcomeEffect, agent_id: str) -> list[float | None]:
        """Apply a recorded outcome (see _patch), and the competence routing will use now for its cells."""
        with self._lock:
            key = self._patch(effect)  # the file's state the patch saw: read once per record (one statement less)
            skill_ids = [c.skill_id for c in effect.competence]
            return self._competence_now(agent_id, skill_ids, current=key)

    def competence_now(self, agent_id: str, skill_ids: list[str], derive: bool = False) -> list[float | None]:
        """The competence routing will use for these cells (see _competence_now)."""
        with self._lock:
            return self._competence_now(agent_id, skill_ids, derive=derive)

    def _numbers_unchanged(self, since: tuple[int, int] | None, now: tuple[int, int]) -> bool:
        """Whether the file went from state `since` to `now` through edits of texts alone, if at all: then the
        arrays of `since` still hold (re-deriving took 3.5 s at 200 agents x 2,000 skills for a new description).
        Another process's commit changes data_version, which is never carried over."""
        if since is None or since[0] != now[0] or since[1] > now[1]:
            return False
        return all(generation in self._texts_only for generation in range(since[1] + 1, now[1] + 1))

    def _derive(self) -> HandbookArrays:
        """The arrays from the live tables, read as plain rows (a validated model per row took 7.5 s at 356,000
        competence rows). The cyclic collector waits meanwhile: the rows are a million new tuples, and each
        collection they set off walked all those made before (it freed nothing, and took a sixth of the time)."""
        with _collector_paused():
            competence, costs = self.store.evidence_rows()
            return build_arrays(
                self.store.modes(),
                self.store.skills(),
                self.store.agents(),
                competence,  # type: ignore[arg-type]  # the fields of Competence, read by name alike
                costs,  # type: ignore[arg-type]  # the fields of CostStats
                kappa=self.kappa,
                length_effect=self.store.length_effect(),
                ci_inflation=self.store.ci_inflation(),
            )

    def _competence_now(
        self, agent_id: str, skill_ids: list[str], derive: bool = False, current: tuple[int, int] | None = None
    ) -> list[float | None]:
        """The competence routing will use for these cells, outcomes queued in the patch included (the patch
        computes the agent's row alone). When the arrays are not current: derived again after this process's own
        edits (the next read would derive them anyway; QA: an unrelated upsert_mode made it null), else (another
        process wrote since) None unless `derive` (a repeated report: rare): deriving at every record made every
        record of two servers sharing a file re-derive the whole handbook."""
        if current is None:  # (data_version, generation) as read now, unless the caller just read them
            current = (self.store.data_version(), self.store.generation)
        if self._pending is not None and self._numbers_unchanged(self._pending_key, current):
            return self._pending.competence(agent_id, skill_ids)
        if self._pending is None and self._arrays is not None and self._numbers_unchanged(self._arrays_key, current):
            return self._arrays.competence(agent_id, skill_ids)
        # never read in this process (its first report: QA), or read since no other process wrote
        own_edits_only = self._read_data_version in (None, current[0])
        if derive or own_edits_only:
            return self.read().competence(agent_id, skill_ids)
        return [None] * len(skill_ids)

    def _patch(self, effect: OutcomeEffect) -> tuple[int, int]:
        """Apply a recorded outcome to the cached arrays' evidence in place of rereading the whole handbook; returns
        the (data_version, generation) it saw.

        Valid only when nothing else changed the file's numbers since the arrays (or the last queued outcome)
        were current; otherwise the patch is dropped and the next read rebuilds from the file."""
        last = self._pending_key if self._pending is not None else self._arrays_key
        key = data_version, generation = self.store.data_version(), self.store.generation
        if self._arrays is None or not self._numbers_unchanged(last, (data_version, generation - 1)):
            self._pending, self._arrays_key = None, None
            return key
        if effect.competence or effect.costs:  # an outage that cost nothing changes no cell
            self._pending = self._pending or Patch(self._arrays)
            if not self._pending.add(effect.competence, effect.costs):
                self._pending, self._arrays_key = None, None
                return key
        if self._pending is None:
            self._arrays_key = key
        else:
            self._pending_key = key
        return key


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector (it frees no reference cycles here, only walks the new rows); left as
    found if something else had paused it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
