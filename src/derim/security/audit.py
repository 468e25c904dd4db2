"""The audit log: an append-only record of who did what to which device or key, and how it
ended. Kept in its own SQLite file (across restarts); rows are only ever inserted."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from derim.errors import StorageError
from derim.storage.sqlite_file import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuditEntry(BaseModel):
    """One audited action."""

    id: int | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    actor: str = Field(description="The API key (``name (key_id)``), or ``local`` without auth.")
    action: str = Field(description="Such as control, device.create, key.revoke.")
    target: str = Field(description="The device, key or site acted on.")
    result: str = Field(description="How it ended: a command's status, ok, or the error.")
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditLog(SQLiteFile):
    """Append and read audit entries."""

    schema = _SCHEMA
    label = "the audit log"

    async def record(self, entry: AuditEntry) -> None:
        """Append an entry (committed on return)."""
        await asyncio.to_thread(self.record_sync, entry)

    def record_sync(self, entry: AuditEntry) -> None:
        """Append an entry from synchronous code (the CLI)."""
        row = (entry.at.isoformat(), entry.actor, entry.action, entry.target, entry.result,
               json.dumps(entry.detail, default=str))  # fmt: skip
        with self._lock:
            try:
                self._connection().execute(
                    "INSERT INTO audit (at, actor, action, target, result, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.Error as exc:
                raise StorageError(f"could not write the audit log {self.path}: {exc}") from exc

    async def entries(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        target: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Entries newest first, ``limit`` of them, numbered below ``before``, optionally only
        of one target or action."""
        return await asyncio.to_thread(self._entries, limit, before, target, action)

    def _entries(
        self, limit: int, before: int | None, target: str | None, action: str | None
    ) -> list[AuditEntry]:
        clauses: list[str] = ["id < ?"]
        params: list[object] = [before if before is not None else 2**63 - 1]
        for column, value in (("target", target), ("action", action)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        with self._lock:
            try:
                rows = self._connection().execute(
                    "SELECT id, at, actor, action, target, result, detail FROM audit"
                    f" WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
                    (*params, limit),
                )
                return [
                    AuditEntry(
                        id=r[0],
                        at=r[1],
                        actor=r[2],
                        action=r[3],
                        target=r[4],
                        result=r[5],
                        detail=json.loads(r[6]),
                    )
                    for r in rows
                ]
            except sqlite3.Error as exc:
                raise StorageError(f"audit log {self.path}: {exc}") from exc
