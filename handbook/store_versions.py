"""Versions of the handbook: each a snapshot (the export document) its events replay onto; making one live (import,
learn, promote, rollback), reading them back, and replaying one (rebuild, state_of).

Why its own part: what a version is and how one goes live is the store's history, and the one place that replaces
the live tables wholesale. Promotion never rewrites history: it adds a NEW version whose parent is the promoted one,
so the log of versions reads as what happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from skillorchestra.handbook.ci_scale import effective_ci_inflation
from skillorchestra.handbook.document_checks import check_document
from skillorchestra.handbook.errors import InvalidInput, NotFound
from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.schema import dumps, pack_snapshot, unpack_snapshot
from skillorchestra.handbook.store_events import EventLog
from skillorchestra.handbook.store_live import effective_length_effect

# how a learned version's summary says it was stored without going live; promoting it drops the remark
NOT_LIVE_MARK = " (stored, not live:"
# Keys of a version's metrics that record how it went live (promote adds the first four to the metrics it copies
# from the version it restores; learn sets the others), not figures a learning run measured.
NOT_LIVE_METRICS = ("went_live", "not_live_reason", "agents_back_on_prior")  # of a learned version stored only
BOOKKEEPING_METRICS = frozenset({"promoted_from", "replaced", "with_events", "rollback", *NOT_LIVE_METRICS})


class Versions(EventLog):
    def versions(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.conn.execute(
                "SELECT id, parent_id, created_at, source, summary, metrics FROM versions ORDER BY id"
            ).fetchall()
        return [
            {
                "version": r[0],
                "parent": r[1],
                "created_at": r[2],
                "source": r[3],
                "summary": r[4],
                "metrics": json.loads(r[5] or "{}"),
            }
            for r in rows
        ]

    def snapshot(self, version: int) -> HandbookDocument:
        with self.lock:
            row = self.db.conn.execute("SELECT snapshot FROM versions WHERE id = ?", [version]).fetchone()
        if row is None:
            raise self._unknown_version(version)
        return HandbookDocument.model_validate_json(unpack_snapshot(row[0]))

    def snapshot_skill_parents(self, version: int) -> dict[str, str | None]:
        """skill id -> parent id as the version's snapshot placed them (parsed as plain JSON: validating the whole
        snapshot, MBs of competence rows, as a HandbookDocument would take seconds)."""
        with self.lock:
            row = self.db.conn.execute("SELECT snapshot FROM versions WHERE id = ?", [version]).fetchone()
        skills = json.loads(unpack_snapshot(row[0])).get("skills", []) if row is not None else []
        return {skill["id"]: skill.get("parent_id") for skill in skills}

    def _unknown_version(self, version: int) -> NotFound:
        numbers = [v["version"] for v in self.versions()]
        listed = f"this handbook has versions {min(numbers)} to {max(numbers)}" if numbers else "it has none yet"
        return NotFound("version", str(version), hint=f"{listed} (`skillorchestra handbook versions` lists them)")

    def create_version(
        self,
        document: HandbookDocument,
        *,
        source: str,
        summary: str | Callable[[int], str] = "",
        metrics: dict[str, Any] | None = None,
        live: bool = True,
    ) -> int:
        """Replace the live handbook by `document` and make it a new version (import, learn, refine); with
        live=False the version is only stored (its parent is still the live one), for `promote` to make live.
        `summary` may be a function of the new version's number (a summary that names it)."""
        with self.lock:  # ids the live state holds are not refused again (its entities only: no evidence rows)
            held = HandbookDocument(modes=self.modes(), skills=self.skills(), agents=self.agents())
        check_document(document, live=held, texts=False)  # texts: see check_document
        with self.write():
            parent = self.current_version() or None
            return self._insert_version(
                document, source=source, summary=summary, parent=parent, metrics=metrics, live=live
            )

    def _insert_version(
        self,
        document: HandbookDocument,
        *,
        source: str,
        summary: str | Callable[[int], str],
        parent: int | None,
        metrics: dict[str, Any] | None = None,
        live: bool = True,
    ) -> int:
        row = self.db.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM versions").fetchone()
        version = int(row[0])
        summary = summary(version) if callable(summary) else summary
        document = document.model_copy(
            update={
                "version": version,
                "length_effect": effective_length_effect(document.length_effect),
                "ci_inflation": effective_ci_inflation(document.ci_inflation),
            }
        )
        if live:
            self._replace_live_state(document)
        self.db.table("versions").insert(
            {
                "id": version,
                "parent_id": parent,
                "created_at": time.time(),
                "source": source,
                "summary": summary,
                "metrics": dumps(metrics or {}),
                "snapshot": pack_snapshot(document.model_dump_json()),
            },
            pk="id",
        )
        if live:
            self._set_meta("current_version", str(version))
        return version

    def rebuild(self) -> HandbookDocument:
        """Restore the live version's snapshot and replay its events; returns the state it replaced.

        The skill index is rebuilt from the skills first: it is derived data, and when it is what was damaged,
        clearing the skills (whose triggers update it) failed before it could be rebuilt."""
        with self.write():
            self._compact_skill_index()
            before = self.document()
            version = self.current_version()
            self._replace_live_state(self.snapshot(version))
            for kind, payload in self._streamed_events(version):
                self._apply_event(kind, payload)
            return before

    # -- promotion and rollback (`skillorchestra handbook promote V` / `rollback`; owner: learn CLI) ------------
    # A promotion never rewrites history: it adds a NEW version whose parent is the promoted one, so the log
    # of versions reads as what happened. Events recorded against the replaced live version stay in the log
    # against it (they are that version's history and can be promoted back with it).

    def state_of(self, version: int) -> HandbookDocument:
        """Version `version` as it was when last live: its snapshot plus a replay of its own events.

        For the live version this is the live state. Events folded away by `prune` are in a newer snapshot, not
        here. The replay runs in a scratch in-memory store, so this file is only read.
        """
        snapshot = self.snapshot(version)  # NotFound for an unknown version
        if version == self.current_version():
            return self.document()
        if not self.event_count(version):
            return snapshot
        scratch = type(self)(":memory:")  # a HandbookStore: named here, store.py would import in a cycle
        try:
            with self.lock, scratch.write():
                scratch._set_meta("current_version", str(version))  # the scratch's live state is this version's
                scratch._replace_live_state(snapshot)
                for kind, payload in self._streamed_events(version):
                    scratch._apply_event(kind, payload)
            return scratch.document().model_copy(update={"version": version})
        finally:
            scratch.close()

    def version_info(self, version: int) -> dict[str, Any]:
        """One row of `versions()` (NotFound for an unknown version)."""
        for row in self.versions():
            if row["version"] == version:
                return row
        raise self._unknown_version(version)

    def promote(
        self, version: int, *, with_events: bool = True, summary: str | None = None, rollback: bool = False
    ) -> int:
        """Make `version` live again as a new version (parent = `version`); returns the new version's number.

        with_events=True (default) restores the version as it was when last live (snapshot + its events), so
        outcomes recorded while it served are not lost; False restores its snapshot exactly as created.
        """
        with self.write():
            live = self.current_version()
            info = self.version_info(version)
            if version == live:
                raise InvalidInput("version", version, f"a version other than the live one ({live})")
            document = self.state_of(version) if with_events else self.snapshot(version)
            metrics = dict(info["metrics"], promoted_from=version, replaced=live, with_events=with_events)
            metrics["rollback"] = rollback  # a rollback walks on back; an explicit promote is undone instead
            for key in NOT_LIVE_METRICS:  # a learned version stored without going live: live now
                metrics.pop(key, None)
            was = str(info["summary"]).split(NOT_LIVE_MARK)[0]  # live now, whatever it was when stored
            text = summary or f"promoted version {version} (replacing {live}): {was}"
            return self._insert_version(document, source="promote", summary=text, parent=version, metrics=metrics)

    def rollback_target(self) -> int:
        """The version `rollback` would promote: undo the last change.

        After an explicit `promote`, that is the version the promotion replaced. Otherwise it is the live version's
        parent, looking through promotions made by rollbacks (and prunes): a rolled-back version stands for the
        version it restored, so two rollbacks in a row walk two steps back. The initial handbook is never a target
        while it holds no agent (routing on it fails): `promote 1` empties the live handbook on purpose. Agents loaded
        into it (`agents load`, then an `import` or `learn`: QA) make it one like any other."""
        with self.lock:
            info = self.version_info(self.current_version())
            target: int | None
            while True:
                if info["source"] == "promote" and not _made_by_rollback(info):
                    target = info["metrics"].get("replaced")  # undo the promotion
                    break
                if info["source"] in ("promote", "prune") and info["parent"] is not None:
                    info = self.version_info(int(info["parent"]))  # it stands for the version it restored or folded
                    continue
                target = info["parent"]
                break
            if target is None:
                raise InvalidInput("version", info["version"], "a live version with a parent to roll back to")
            if self.is_empty_initial(int(target)):
                live = self.version_info(self.current_version())
                pruned = (  # QA: `rollback` right after `prune` read as if rollback were broken
                    f"; the live version {live['version']} is a prune, which left the live state as it was, so there"
                    " is nothing of it to undo"
                    if live["source"] == "prune"
                    else ""
                )
                raise InvalidInput(
                    "version",
                    int(target),
                    "a version other than the empty initial handbook to roll back to (to empty the live handbook on"
                    f" purpose: `handbook promote {target}`){pruned}",
                )
            return int(target)

    def is_empty_initial(self, version: int) -> bool:
        """Whether `version` is the initial handbook with no agent in it as it was when last live (see
        rollback_target). Its agent events alone tell (review: replaying every outcome of a version that served
        for months, state_of took seconds, twice per rollback)."""
        if self.version_info(version)["source"] != "init" or self.snapshot(version).agents:
            return False
        agents: set[str] = set()
        with self.lock:
            rows = self.db.conn.execute(
                "SELECT kind, payload FROM events WHERE version = ? AND kind IN ('upsert_agent', 'delete_agent')"
                " ORDER BY seq",
                [version],
            )
            for kind, payload in rows:
                agent_id = json.loads(payload)["id"]
                if kind == "upsert_agent":
                    agents.add(agent_id)
                else:
                    agents.discard(agent_id)
        return not agents

    def rollback(self) -> int:
        """Promote the live version's parent (see `rollback_target`); returns the new version's number."""
        with self.write():
            live = self.current_version()
            target = self.rollback_target()
            return self.promote(target, summary=f"rollback from version {live} to version {target}", rollback=True)

    def _pruned_since(self, version: int, live: int) -> bool:
        """Whether `live` was made from `version` by prunes alone (each leaves the live state as it was): a
        decision routed under `version` and reported after a prune (or while one ran) is applied as usual."""
        while live != version:
            row = self.db.conn.execute("SELECT source, parent_id FROM versions WHERE id = ?", [live]).fetchone()
            if row is None or row[0] != "prune" or row[1] is None:
                return False
            live = int(row[1])
        return True


def _made_by_rollback(info: dict[str, Any]) -> bool:
    """Versions promoted by `rollback` say so in their metrics (older ones only in their summary)."""
    return bool(info["metrics"].get("rollback")) or str(info["summary"]).startswith("rollback from")
