"""Command records and schedules in their own SQLite file, kept across restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime

from derim.control.schedules import Schedule
from derim.errors import NotFoundError, StorageError
from derim.models.command import CommandResult
from derim.storage.sqlite_file import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device_id, requested_at);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class CommandStore(SQLiteFile):
    """Save (insert or update) and read command records."""

    schema = _SCHEMA
    label = "the command store"

    async def save(self, record: CommandResult) -> None:
        """Store the record as it is now (committed on return)."""
        requested_at = record.history[0][1] if record.history else datetime.now()
        row = (str(record.command_id), record.device_id, requested_at.isoformat(),
               record.model_dump_json())  # fmt: skip
        await asyncio.to_thread(
            self._write,
            "INSERT OR REPLACE INTO commands (command_id, device_id, requested_at, body)"
            " VALUES (?, ?, ?, ?)",
            row,
        )

    def _write(self, statement: str, row: tuple[str, ...]) -> None:
        with self._lock:
            try:
                self._connection().execute(statement, row)
            except sqlite3.Error as exc:
                raise StorageError(f"could not record {row[0]}: {exc}") from exc

    async def get(self, command_id: str) -> CommandResult:
        """One command's record; ``NotFoundError`` if there is none."""
        rows = await asyncio.to_thread(
            self._query, "SELECT body FROM commands WHERE command_id = ?", (command_id,)
        )
        if not rows:
            raise NotFoundError("command", command_id)
        return CommandResult.model_validate_json(rows[0])

    async def for_device(
        self, device_id: str, limit: int = 100, before: datetime | None = None
    ) -> list[CommandResult]:
        """A device's commands, newest first, ``limit`` of them, requested before ``before``."""
        rows = await asyncio.to_thread(
            self._query,
            "SELECT body FROM commands WHERE device_id = ? AND requested_at < ?"
            " ORDER BY requested_at DESC LIMIT ?",
            (device_id, before.isoformat() if before else "9999", limit),
        )
        return [CommandResult.model_validate_json(body) for body in rows]

    async def save_schedule(self, schedule: Schedule) -> None:
        """Store a schedule as it is now (committed on return)."""
        row = (str(schedule.schedule_id), schedule.created_at.isoformat(),
               schedule.model_dump_json())  # fmt: skip
        await asyncio.to_thread(
            self._write,
            "INSERT OR REPLACE INTO schedules (schedule_id, created_at, body) VALUES (?, ?, ?)",
            row,
        )

    async def schedule(self, schedule_id: str) -> Schedule:
        """One schedule; ``NotFoundError`` if there is none."""
        rows = await asyncio.to_thread(
            self._query, "SELECT body FROM schedules WHERE schedule_id = ?", (schedule_id,)
        )
        if not rows:
            raise NotFoundError("schedule", schedule_id)
        return Schedule.model_validate_json(rows[0])

    async def schedules(self, limit: int = 100) -> list[Schedule]:
        """The newest schedules first."""
        rows = await asyncio.to_thread(
            self._query, "SELECT body FROM schedules ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [Schedule.model_validate_json(body) for body in rows]

    def _query(self, statement: str, params: tuple[object, ...]) -> list[str]:
        with self._lock:
            try:
                return [row[0] for row in self._connection().execute(statement, params)]
            except sqlite3.Error as exc:
                raise StorageError(f"command store {self.path}: {exc}") from exc
