"""A durable on-disk queue of telemetry batches that could not be stored yet.

Batches are kept in their own SQLite file (``synchronous=FULL``) in arrival order and replayed
oldest first, so records reach the backend in the order they were published, even across restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson

from derim.errors import StorageError
from derim.models.telemetry import TELEMETRY_CLASSES, DERTelemetry

_CLASSES = {cls.__name__: cls for cls in TELEMETRY_CLASSES}


def encode_batch(records: Sequence[DERTelemetry]) -> bytes:
    """Serialise records with their class names (for replay with the same validation)."""
    return orjson.dumps(
        [(type(r).__name__, r.model_dump(mode="json", exclude_unset=True)) for r in records]
    )


def decode_batch(payload: bytes) -> list[DERTelemetry]:
    """The records of a batch made by :func:`encode_batch`."""
    return [_CLASSES[name].model_validate(data) for name, data in orjson.loads(payload)]


class Spool:
    """Append-only batch queue in a SQLite file; ``depth`` counts records, not batches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.depth = 0

    async def open(self) -> None:
        """Open (or create) the spool file and count what it still holds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "records INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        (depth,) = conn.execute("SELECT coalesce(sum(records), 0) FROM batches").fetchone()
        self.depth = int(depth)
        self._conn = conn

    async def close(self) -> None:
        """Close the file; spooled batches stay for the next start."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def append(self, records: Sequence[DERTelemetry]) -> None:
        """Durably add one batch at the tail."""
        payload = encode_batch(records)
        await asyncio.to_thread(
            self._run,
            "INSERT INTO batches (records, payload) VALUES (?, ?)",
            (len(records), payload),
        )
        self.depth += len(records)

    async def peek(self) -> tuple[int, list[DERTelemetry]] | None:
        """The oldest batch and its sequence number, or None when empty."""
        row = await asyncio.to_thread(
            self._fetch, "SELECT seq, payload FROM batches ORDER BY seq LIMIT 1"
        )
        if row is None:
            return None
        return int(row[0]), decode_batch(row[1])

    async def remove(self, seq: int, count: int) -> None:
        """Drop a batch once it has been stored."""
        await asyncio.to_thread(self._run, "DELETE FROM batches WHERE seq = ?", (seq,))
        self.depth -= count

    def _run(self, statement: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._require().execute(statement, params)
            except sqlite3.Error as exc:
                raise StorageError(f"spool {self.path} failed: {exc}") from exc

    def _fetch(self, statement: str) -> tuple[int, bytes] | None:
        with self._lock:
            try:
                row: tuple[int, bytes] | None = self._require().execute(statement).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"spool {self.path} failed: {exc}") from exc
            return row

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("spool is not open")
        return self._conn
