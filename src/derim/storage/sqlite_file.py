"""The small SQLite files DERIM keeps besides telemetry: rejects, commands, keys, audit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import ClassVar

from derim.errors import StorageError


def open_file(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to ``path`` (created with its folder if needed) in WAL mode and autocommit,
    usable from worker threads (callers serialise use with a lock), with ``schema`` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db


class SQLiteFile:
    """One such file: opened with its ``schema``, used under one lock, closed once."""

    schema: ClassVar[str]
    label: ClassVar[str]
    """What the file holds, for error messages (``the audit log``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create or open the file."""
        await asyncio.to_thread(self.open_sync)

    def open_sync(self) -> None:
        """Create or open the file from synchronous code (the CLI)."""
        self._db = open_file(self.path, self.schema)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"{self.label} is not open")
        return self._db
