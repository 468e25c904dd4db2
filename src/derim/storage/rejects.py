"""Dead letters: inputs that could not become records (a malformed MQTT payload, say), kept with
their raw bytes for inspection, newest ``keep`` only.

``add`` returns once the rejects are committed, so a message can be acknowledged to its sender
after it; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from derim.errors import StorageError
from derim.storage.sqlite_file import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Reject:
    """One input refused, why, and its raw payload."""

    source: str
    """Where it came from, such as ``mqtt``."""
    topic: str
    reason: str
    payload: bytes
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None


class RejectStore(SQLiteFile):
    """Rejects in their own SQLite file; ``count`` is the total since start."""

    schema = _SCHEMA
    label = "the reject store"

    def __init__(self, path: Path, keep: int = 10_000) -> None:
        super().__init__(path)
        self.keep = keep
        self.count = 0

    async def add(self, rejects: Sequence[Reject]) -> None:
        """Store ``rejects`` (committed on return) and forget all but the newest ``keep``."""
        if rejects:
            await asyncio.to_thread(self._add, rejects)
            self.count += len(rejects)

    def _add(self, rejects: Sequence[Reject]) -> None:
        rows = [
            (r.received_at.isoformat(), r.source, r.topic, r.reason, r.payload) for r in rejects
        ]
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO rejects (received_at, source, topic, reason, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute(
                    "DELETE FROM rejects WHERE id <= (SELECT MAX(id) FROM rejects) - ?",
                    (self.keep,),
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StorageError(f"could not store {len(rows)} rejects: {exc}") from exc

    async def latest(self, limit: int = 100, before_id: int | None = None) -> list[Reject]:
        """The newest rejects first, ``limit`` of them, older than ``before_id`` if given."""
        return await asyncio.to_thread(self._latest, limit, before_id)

    def _latest(self, limit: int, before_id: int | None) -> list[Reject]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT id, received_at, source, topic, reason, payload FROM rejects"
                    " WHERE id < ? ORDER BY id DESC LIMIT ?",
                    (before_id if before_id is not None else 2**63 - 1, limit),
                )
                .fetchall()
            )
        return [
            Reject(
                id=row[0],
                received_at=datetime.fromisoformat(row[1]),
                source=row[2],
                topic=row[3],
                reason=row[4],
                payload=bytes(row[5]),
            )
            for row in rows
        ]
