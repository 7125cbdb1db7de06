"""What every part of HandbookStore shares: its one attribute of its own and the meta-row lookups.

HandbookStore (store.py) is put together from one part per job (store_live, store_events, store_versions,
store_decisions, store_retention), each a mixin over the parts it calls. They all stand on this base, so a reader
(and a type checker) sees here what they rely on beyond SqliteFile's connection (`db`), `lock` and `write()`.
"""

from __future__ import annotations

from pathlib import Path

from skillorchestra.handbook.sqlite_file import BUSY_TIMEOUT_S, SqliteFile


class StoreBase(SqliteFile):
    generation: int  # bumped by every change of the live state made through this object

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.generation = 0  # before SqliteFile opens the file: preparing a new one makes its first version
        super().__init__(path, busy_timeout_s=busy_timeout_s)

    def _meta(self, key: str) -> str | None:
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    def current_version(self) -> int:
        with self.lock:
            return int(self._meta("current_version") or 0)

    def _exists(self, table: str, row_id: str) -> bool:
        return self.db.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", [row_id]).fetchone() is not None
