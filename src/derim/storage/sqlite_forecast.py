"""Forecast tables of the SQLite backend: each device's last issued power forecast (kW).

``forecast`` holds one row per device (model and issue time, epoch ms); ``forecast_point`` its
steps. A new issue replaces the device's previous one in a single transaction. The functions
take a connection and run on the store's writer or reader threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from derim.storage.base import (
    StoredForecast,
    StoredForecastPoint,
    forecast_rows,
    from_epoch_ms,
    to_epoch_ms,
)

CREATE_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS forecast ("
    " device_id TEXT PRIMARY KEY, model TEXT NOT NULL, issued_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS forecast_point ("
    " device_id TEXT NOT NULL, ts INTEGER NOT NULL,"
    " p10 REAL NOT NULL, p50 REAL NOT NULL, p90 REAL NOT NULL,"
    " PRIMARY KEY (device_id, ts)) WITHOUT ROWID",
)


def create(conn: sqlite3.Connection) -> None:
    """Create the forecast tables if they do not exist."""
    for statement in CREATE_STATEMENTS:
        conn.execute(statement)


def write(
    conn: sqlite3.Connection,
    device_id: str,
    model: str,
    issued_at: datetime,
    points: Sequence[StoredForecastPoint],
) -> None:
    """Replace the device's forecast by this issue (an empty one is ignored)."""
    rows = forecast_rows(points)
    if not rows:
        return
    conn.execute("BEGIN")
    try:
        conn.execute(
            "INSERT OR REPLACE INTO forecast (device_id, model, issued_ms) VALUES (?, ?, ?)",
            (device_id, model, to_epoch_ms(issued_at)),
        )
        conn.execute("DELETE FROM forecast_point WHERE device_id = ?", (device_id,))
        conn.executemany(
            "INSERT OR REPLACE INTO forecast_point (device_id, ts, p10, p50, p90) "
            "VALUES (?, ?, ?, ?, ?)",
            [(device_id, *row) for row in rows],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def latest(conn: sqlite3.Connection, device_id: str) -> StoredForecast | None:
    """The device's last issued forecast, steps in time order; None when it has none."""
    issue = conn.execute(
        "SELECT model, issued_ms FROM forecast WHERE device_id = ?", (device_id,)
    ).fetchone()
    if issue is None:
        return None
    rows = conn.execute(
        "SELECT ts, p10, p50, p90 FROM forecast_point WHERE device_id = ? ORDER BY ts",
        (device_id,),
    ).fetchall()
    points = tuple(
        StoredForecastPoint(from_epoch_ms(ts), p10, p50, p90) for ts, p10, p50, p90 in rows
    )
    return StoredForecast(device_id, issue[0], from_epoch_ms(issue[1]), points)


def delete(conn: sqlite3.Connection, device_id: str) -> None:
    """Delete the device's forecast (inside the caller's transaction)."""
    conn.execute("DELETE FROM forecast_point WHERE device_id = ?", (device_id,))
    conn.execute("DELETE FROM forecast WHERE device_id = ?", (device_id,))
