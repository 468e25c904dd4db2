"""Charging sessions and site power limits, in their own SQLite file.

Active sessions are also held in memory (the site-limit split and the meter readings of a
running session look them up on every message); the register of a running session is kept
in memory and written when the session stops.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

from derim.errors import StorageError
from derim.models.session import ChargingSession, SessionState
from derim.storage.sqlite_file import open_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    transaction_id TEXT,
    connector_id INTEGER NOT NULL,
    id_tag TEXT,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    stopped_at TEXT,
    meter_start_kwh REAL,
    meter_last_kwh REAL,
    stop_reason TEXT,
    UNIQUE (device_id, transaction_id)
);
CREATE INDEX IF NOT EXISTS sessions_by_device ON sessions (device_id, session_id);
CREATE TABLE IF NOT EXISTS site_limits (site TEXT PRIMARY KEY, limit_kw REAL NOT NULL);
"""
_COLUMNS = (
    "session_id, device_id, transaction_id, connector_id, id_tag, state, started_at, "
    "stopped_at, meter_start_kwh, meter_last_kwh, stop_reason"
)


class SessionStore:
    """Start, update, stop and list charging sessions; keep site limits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], ChargingSession] = {}
        self._site_limits: dict[str, float] = {}

    async def open(self) -> None:
        """Create or open the file and load the active sessions and site limits."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        db = open_file(self.path, _SCHEMA)
        active = db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE state = 'active'")
        for row in active.fetchall():
            session = _session(row)
            self._active[(session.device_id, session.transaction_id)] = session
        limits = db.execute("SELECT site, limit_kw FROM site_limits").fetchall()
        self._site_limits = {site: limit for site, limit in limits}
        self._db = db

    async def close(self) -> None:
        """Write the registers of running sessions and close the file."""
        sessions = list(self._active.values())
        if self._db is not None and sessions:
            await asyncio.to_thread(self._save_meters, sessions)
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def start(
        self,
        device_id: str,
        connector_id: int,
        started_at: datetime,
        *,
        id_tag: str | None = None,
        meter_start_kwh: float | None = None,
        transaction_id: str | None = None,
    ) -> ChargingSession:
        """Record a session that started; numbered by DERIM when ``transaction_id`` is None.

        A transaction the charger reports twice (a retry after a reconnect) is the same session.
        """
        if transaction_id is not None:
            known = self._active.get((device_id, transaction_id))
            if known is not None:
                return known
        row = (
            device_id,
            transaction_id,
            connector_id,
            id_tag,
            started_at.isoformat(),
            meter_start_kwh,
            meter_start_kwh,
        )
        session = await asyncio.to_thread(self._insert, row)
        if session.state is SessionState.ACTIVE:
            self._active[(device_id, session.transaction_id)] = session
        return session

    def _insert(self, row: tuple[object, ...]) -> ChargingSession:
        with self._lock:
            db = self._connection()
            try:
                cursor = db.execute(
                    "INSERT INTO sessions (device_id, transaction_id, connector_id, id_tag, state,"
                    " started_at, meter_start_kwh, meter_last_kwh)"
                    " VALUES (?, ?, ?, ?, 'active', ?, ?, ?)"
                    " ON CONFLICT (device_id, transaction_id) DO NOTHING",
                    row,
                )
                if cursor.rowcount == 1 and row[1] is None:
                    db.execute(
                        "UPDATE sessions SET transaction_id = session_id WHERE session_id = ?",
                        (cursor.lastrowid,),
                    )
                key = (row[0], row[1] if row[1] is not None else str(cursor.lastrowid))
                found = db.execute(
                    f"SELECT {_COLUMNS} FROM sessions WHERE device_id = ? AND transaction_id = ?",
                    key,
                ).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"could not record a session of {row[0]}: {exc}") from exc
        return _session(found)

    def active(self, device_id: str | None = None) -> list[ChargingSession]:
        """Running sessions, of one device or of all."""
        return [s for s in self._active.values() if device_id is None or s.device_id == device_id]

    def find_active(self, device_id: str, transaction_id: str) -> ChargingSession | None:
        """The running session with this transaction id, if any."""
        return self._active.get((device_id, transaction_id))

    def on_connector(self, device_id: str, connector_id: int) -> ChargingSession | None:
        """The running session on one connector (or EVSE), if any."""
        for session in self._active.values():
            if session.device_id == device_id and session.connector_id == connector_id:
                return session
        return None

    def update_meter(self, session: ChargingSession, meter_kwh: float) -> ChargingSession:
        """Note the import register of a running session (kWh); the updated session."""
        start = session.meter_start_kwh if session.meter_start_kwh is not None else meter_kwh
        updated = session.model_copy(update={"meter_start_kwh": start, "meter_last_kwh": meter_kwh})
        key = (session.device_id, session.transaction_id)
        if key in self._active:
            self._active[key] = updated
        return updated

    async def stop(
        self,
        device_id: str,
        transaction_id: str,
        stopped_at: datetime,
        *,
        meter_stop_kwh: float | None = None,
        reason: str | None = None,
    ) -> ChargingSession | None:
        """Record that a session stopped; None if no such session is running."""
        session = self._active.get((device_id, transaction_id))
        if session is None:
            return None
        if meter_stop_kwh is not None and session.meter_start_kwh is None:
            session = session.model_copy(update={"meter_start_kwh": meter_stop_kwh})
        ended = session.ended(stopped_at, meter_stop_kwh, reason)
        await asyncio.to_thread(self._save_stop, ended)
        self._active.pop((device_id, transaction_id), None)
        return ended

    def _save_stop(self, session: ChargingSession) -> None:
        assert session.stopped_at is not None  # set by ChargingSession.ended
        self._write(
            "UPDATE sessions SET state = ?, stopped_at = ?, meter_start_kwh = ?,"
            " meter_last_kwh = ?, stop_reason = ? WHERE session_id = ?",
            [
                (
                    session.state.value,
                    session.stopped_at.isoformat(),
                    session.meter_start_kwh,
                    session.meter_last_kwh,
                    session.stop_reason,
                    session.session_id,
                )
            ],
        )

    def _save_meters(self, sessions: list[ChargingSession]) -> None:
        self._write(
            "UPDATE sessions SET meter_start_kwh = ?, meter_last_kwh = ? WHERE session_id = ?",
            [(s.meter_start_kwh, s.meter_last_kwh, s.session_id) for s in sessions],
        )

    async def history(
        self,
        device_id: str,
        *,
        state: SessionState | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[ChargingSession]:
        """A device's sessions, newest first, ``limit`` of them, numbered below ``before``."""
        rows = await asyncio.to_thread(self._history, device_id, state, limit, before)
        sessions = [_session(row) for row in rows]
        return [self._active.get((s.device_id, s.transaction_id), s) for s in sessions]

    def _history(
        self, device_id: str, state: SessionState | None, limit: int, before: int | None
    ) -> list[tuple[object, ...]]:
        states = [state.value] if state is not None else [s.value for s in SessionState]
        with self._lock:
            return (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM sessions WHERE device_id = ? AND session_id < ?"
                    f" AND state IN ({', '.join('?' * len(states))})"
                    " ORDER BY session_id DESC LIMIT ?",
                    (device_id, before if before is not None else 2**63 - 1, *states, limit),
                )
                .fetchall()
            )

    def site_limits(self) -> dict[str, float]:
        """Power limit (kW) of each site (device group) that has one."""
        return dict(self._site_limits)

    async def set_site_limit(self, site: str, limit_kw: float | None) -> None:
        """Set (or, with None, remove) the power limit of a site, kW."""
        if limit_kw is None:
            await asyncio.to_thread(
                self._write, "DELETE FROM site_limits WHERE site = ?", [(site,)]
            )
            self._site_limits.pop(site, None)
            return
        await asyncio.to_thread(
            self._write,
            "INSERT OR REPLACE INTO site_limits (site, limit_kw) VALUES (?, ?)",
            [(site, limit_kw)],
        )
        self._site_limits[site] = limit_kw

    def _write(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        with self._lock:
            db = self._connection()
            try:
                db.executemany(statement, rows)
            except sqlite3.Error as exc:
                raise StorageError(f"session store {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the session store is not open")
        return self._db


def _session(row: tuple[object, ...]) -> ChargingSession:
    names = [name.strip() for name in _COLUMNS.split(",")]
    return ChargingSession.model_validate(dict(zip(names, row, strict=True)))
