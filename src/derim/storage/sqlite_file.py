"""Opening the small SQLite files DERIM keeps besides telemetry (registry-like stores)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_file(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to ``path`` (created with its folder if needed) in WAL mode and autocommit,
    usable from worker threads (callers serialise use with a lock), with ``schema`` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db
