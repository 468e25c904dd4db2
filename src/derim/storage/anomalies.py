"""Detected anomalies in their own SQLite file (``anomalies.db``), kept across restarts.

An anomaly is keyed by device, field, kind and start: adding it again (a re-run of the detector
over the same data, or an event that grew) updates its end, severity and reason.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from derim.errors import StorageError
from derim.storage.sqlite_file import SQLiteFile
from derim.twin.anomaly_model import Anomaly

FILE_NAME = "anomalies.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS anomalies (
    device_id TEXT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    severity TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (device_id, field, kind, start_ms)
);
CREATE INDEX IF NOT EXISTS anomalies_by_time ON anomalies (device_id, start_ms);
"""


def _ms(moment: datetime) -> int:
    """``moment`` (timezone-aware) as milliseconds since the Unix epoch."""
    if moment.tzinfo is None:
        raise StorageError(f"time {moment} has no timezone; anomaly times are UTC")
    return round(moment.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class AnomalyStore(SQLiteFile):
    """Add (insert or update) and read a device's anomalies."""

    schema = _SCHEMA
    label = "the anomaly store"

    async def add(self, device_id: str, anomalies: Sequence[Anomaly]) -> list[Anomaly]:
        """Store ``anomalies`` of ``device_id`` (committed on return); the same device, field,
        kind and start again updates end, severity and reason. Returns the ones not stored
        before."""
        if not anomalies:
            return []
        return await asyncio.to_thread(self._add, device_id, anomalies)

    def _add(self, device_id: str, anomalies: Sequence[Anomaly]) -> list[Anomaly]:
        rows = [
            (device_id, a.field, a.kind, _ms(a.start), _ms(a.end), a.severity, a.reason)
            for a in anomalies
        ]
        starts = [row[3] for row in rows]
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN")
                known = set(
                    db.execute(
                        "SELECT field, kind, start_ms FROM anomalies"
                        " WHERE device_id = ? AND start_ms BETWEEN ? AND ?",
                        (device_id, min(starts), max(starts)),
                    ).fetchall()
                )
                db.executemany(
                    "INSERT INTO anomalies"
                    " (device_id, field, kind, start_ms, end_ms, severity, reason)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (device_id, field, kind, start_ms) DO UPDATE SET"
                    " end_ms = excluded.end_ms, severity = excluded.severity,"
                    " reason = excluded.reason",
                    rows,
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StorageError(
                    f"could not store {len(rows)} anomalies of {device_id}: {exc}"
                ) from exc
        new = []
        for anomaly, row in zip(anomalies, rows, strict=True):
            key = (row[1], row[2], row[3])
            if key not in known:
                known.add(key)
                new.append(anomaly)
        return new

    async def between(self, device_id: str, start: datetime, end: datetime) -> list[Anomaly]:
        """``device_id``'s anomalies overlapping [``start``, ``end``), oldest first."""
        return await asyncio.to_thread(self._between, device_id, start, end)

    def _between(self, device_id: str, start: datetime, end: datetime) -> list[Anomaly]:
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT field, kind, start_ms, end_ms, severity, reason FROM anomalies"
                        " WHERE device_id = ? AND start_ms < ? AND end_ms > ?"
                        " ORDER BY start_ms, kind, field",
                        (device_id, _ms(end), _ms(start)),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise StorageError(f"anomaly store {self.path}: {exc}") from exc
        return [
            Anomaly(
                field=row[0],
                kind=row[1],
                start=_time(row[2]),
                end=_time(row[3]),
                severity=row[4],
                reason=row[5],
            )
            for row in rows
        ]
