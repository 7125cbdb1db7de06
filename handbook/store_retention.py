"""What `skillorchestra handbook prune` (handbook/retention.py) asks of the store: fold old events into a new
version's snapshot, and forget old decisions and outcomes while their sessions keep what they spent.

Why its own part: both rewrite history the serving parts only append to, under rules of their own (the replay order
never changes; no kept outcome loses its decision; no decision awaiting its report is lost).
"""

from __future__ import annotations

from skillorchestra.handbook.store_sql import KNOWN_SPEND, MAX_SEQ, UNREPORTED
from skillorchestra.handbook.store_versions import Versions


class Retention(Versions):
    def fold_events_before(self, cutoff: float, *, summary: str) -> tuple[int | None, int, int]:
        """Fold the live version's oldest events into a new version's snapshot and move the rest onto it.

        The folded events are the longest prefix of the log (in append order) created before `cutoff`, so the
        replay order never changes and the live state is unchanged. The old version keeps its snapshot but no
        longer its events (they live on in the new snapshot). Decisions awaiting their report move onto the new
        version, so a prune beside a running server loses no outcome. Returns (new version or None, folded, moved).
        """
        with self.write():
            version = self.current_version()
            conn = self.db.conn
            first_kept = conn.execute(  # the first event at or after the cutoff: it and all after it stay
                "SELECT MIN(seq) FROM events WHERE version = ? AND created_at >= ?", [version, cutoff]
            ).fetchone()[0]
            first_kept = MAX_SEQ if first_kept is None else int(first_kept)
            split, total = conn.execute(
                "SELECT COALESCE(SUM(seq < ?), 0), COUNT(*) FROM events WHERE version = ?", [first_kept, version]
            ).fetchone()
            if split == 0:
                return None, 0, int(total)
            self._replace_live_state(self.snapshot(version))
            for kind, payload in self._streamed_events(version, to_seq=first_kept):
                self._apply_event(kind, payload)
            new = self._insert_version(self.document(), source="prune", summary=summary, parent=version)
            conn.execute(  # the kept events move onto the new version, in their order
                "INSERT INTO events (version, kind, payload, created_at) SELECT ?, kind, payload, created_at"
                " FROM events WHERE version = ? AND seq >= ? ORDER BY seq",
                [new, version, first_kept],
            )
            for kind, payload in self._streamed_events(new):
                self._apply_event(kind, payload)
            self.db.execute("DELETE FROM events WHERE version = ?", [version])
            # the state they were decided under is the new version's: their outcomes must still be applied
            self.db.execute(
                f"UPDATE decisions SET version = ? WHERE version = ? AND {UNREPORTED}",
                [new, version],
            )
            return new, int(split), int(total) - int(split)

    def delete_decisions_before(self, cutoff: float, now: float) -> tuple[int, int]:
        """Forget decisions and outcomes older than `cutoff`; returns (decisions, outcomes) deleted.

        A decision still awaiting its report (unexpired, unreported) stays, and so does one whose outcome
        came after the cutoff, so every kept outcome keeps its decision (idempotent re-reports still work).
        """
        old_enough = (
            "SELECT id FROM decisions WHERE created_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.decision_id = decisions.id AND o.created_at >= ?)"
            " AND (expires_at <= ? OR EXISTS (SELECT 1 FROM outcomes o WHERE o.decision_id = decisions.id))"
        )
        with self.write():
            # their sessions keep what they spent (QA: a session pruned mid-way could spend its budget again)
            self.db.execute(
                f"INSERT INTO pruned_session_spend (session_id, spent_usd, unknown_costs)"
                f" SELECT d.session_id, COALESCE(SUM({KNOWN_SPEND}), 0), SUM({KNOWN_SPEND} IS NULL)"
                f" FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.id"
                f" WHERE d.session_id IS NOT NULL AND d.id IN ({old_enough}) GROUP BY d.session_id"
                " ON CONFLICT (session_id) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd,"
                " unknown_costs = unknown_costs + excluded.unknown_costs",
                [now, now, cutoff, cutoff, now],  # the spend (twice), then which decisions
            )
            decisions = self.db.execute(
                f"DELETE FROM decisions WHERE id IN ({old_enough})", [cutoff, cutoff, now]
            ).rowcount
            outcomes = self.db.execute("DELETE FROM outcomes WHERE created_at < ?", [cutoff]).rowcount
            return int(decisions), int(outcomes)
