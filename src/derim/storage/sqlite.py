"""The embedded SQLite backend: WAL, one writer thread, reader threads, rollup tiers.

Writes run on a single dedicated thread (SQLite has one writer) so the event loop never blocks on
disk; reads run on a small pool of threads with their own connections, which WAL lets proceed
while a write is in progress. Writes append to a staging table (cheap however many devices a batch
covers) that is merged into the raw table in large sorted batches, before any read that needs it.
Rollup tiers are refreshed on the writer thread from a persisted list of dirty (device, day) spans:
at most every ``rollup_interval_s`` during writes, on demand, and before any downsampled query, so
answers are never stale.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from derim.errors import StorageError, StorageUnavailableError
from derim.models.telemetry import DERTelemetry
from derim.storage import sqlite_forecast as forecasts
from derim.storage import sqlite_schema as schema
from derim.storage.base import (
    AGGREGATABLE_FIELDS,
    FIELD_TYPES,
    Order,
    StoredForecast,
    StoredForecastPoint,
    StoreHealth,
    TelemetryPage,
    TelemetryQuery,
    encode_cursor,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000
FIELD_SET = frozenset(FIELD_TYPES) | {"device_id", "timestamp"}
MERGE_ROWS = 50_000
"""Staged rows that trigger a merge into the raw table (reads and rollups merge first anyway)."""
PARALLEL_PAGE_ROWS = 5_000
"""Pages that may hold more rows than this are built in two slices in parallel."""


class _RowMaker:
    """Turns records that set the same fields into raw-table rows ``(dev, ts, *fields)``.

    Only the fields a record set are written (plus ``quality``, which always has a value), so
    merging a later partial reading never blanks out earlier values.
    """

    def __init__(self, set_fields: frozenset[str]) -> None:
        self.fields = tuple(f for f in FIELD_TYPES if f in set_fields or f == "quality")
        self.statement = schema.stage_statement(self.fields)
        self.values: Callable[[DERTelemetry], tuple[Any, ...]]
        if len(self.fields) == 1:
            only = self.fields[0]
            self.values = lambda record: (getattr(record, only),)
        else:
            self.values = attrgetter(*self.fields)


ROLLUP_CHUNK = 25
"""Dirty (device, day) ranges folded into the rollups per write once they are due: a write then
waits for a bounded slice of that work (~10 ms), never for the whole backlog."""


class SQLiteStore:
    """Telemetry in one SQLite file (the device registry may share it)."""

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        readers: int = 2,
        rollup_interval_s: float = 5.0,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._rollup_interval_s = rollup_interval_s
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="derim-sqlite-w")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="derim-sqlite-r")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._dev_keys: dict[str, int] = {}
        self._dev_fields: dict[int, frozenset[str]] = {}
        """Per series, the fields any stored reading has set: the default columns of a query."""
        self._makers: dict[frozenset[str], _RowMaker] = {}
        self._staged = 0
        self._staged_devs: set[int] = set()
        self._last_rollup = time.monotonic()

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the file, schema and connections."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._on_writer(self._open_sync)

    def _open_sync(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        with conn:
            for statement in schema.create_statements():
                conn.execute(statement)
            forecasts.create(conn)
            tables = ["telemetry", "staging", *(schema.tier_table(t) for t in schema.TIERS)]
            for table in tables:
                existing = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for statement in schema.missing_columns(table, existing):
                    conn.execute(statement)
        for device_id, dev, fields in conn.execute("SELECT device_id, dev, fields FROM series"):
            self._dev_keys[device_id] = dev
            self._dev_fields[dev] = frozenset(fields.split(",")) - {""}
        self._write_conn = conn
        (self._staged,) = conn.execute("SELECT count(*) FROM staging").fetchone()
        self._merge_sync()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    async def close(self) -> None:
        """Bring the rollups up to date and close every connection."""
        if self._write_conn is not None:
            await self._on_writer(self._refresh_rollups_sync)
            await self._on_writer(self._write_conn.close)
            self._write_conn = None
        for conn in self._read_conns:
            conn.close()
        self._read_conns.clear()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailableError(f"sqlite unavailable: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite write failed: {exc}") from exc

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite read failed: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        return conn

    # ---------------------------------------------------------------- writes

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        """Store records in one transaction on the writer thread."""
        await self._on_writer(self._write_sync, records)

    def _write_sync(self, records: Sequence[DERTelemetry]) -> None:
        conn = self._require_writer()
        groups: dict[frozenset[str], list[tuple[Any, ...]]] = {}
        keys, seen, makers = self._dev_keys, self._dev_fields, self._makers
        new_fields: dict[int, frozenset[str]] = {}
        last_set: set[str] | None = None
        present: frozenset[str] = frozenset()
        for record in records:
            dev = keys.get(record.device_id)
            if dev is None:
                dev = self._register_series(conn, record.device_id)
            fields_set = record.model_fields_set
            if fields_set != last_set:
                last_set, present = fields_set, frozenset(fields_set)
            if not present <= seen[dev]:
                seen[dev] = new_fields[dev] = seen[dev] | (present & FIELD_SET)
            rows = groups.get(present)
            if rows is None:
                rows = groups[present] = []
                if present not in makers:
                    makers[present] = _RowMaker(present)
            rows.append(
                (dev, (record.timestamp - EPOCH) // ONE_MS, *makers[present].values(record))
            )
        conn.execute("BEGIN")
        try:
            for present, rows in groups.items():
                conn.executemany(makers[present].statement, rows)
                self._staged_devs.update([row[0] for row in rows])
            conn.executemany(
                "UPDATE series SET fields = ? WHERE dev = ?",
                [(",".join(sorted(fields)), dev) for dev, fields in new_fields.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._staged += len(records)
        if self._staged >= MERGE_ROWS:
            self._merge_sync()
        if time.monotonic() - self._last_rollup > self._rollup_interval_s:
            self._refresh_rollups_sync(ROLLUP_CHUNK)

    def _merge_sync(self) -> None:
        """Move staged rows into the raw table (one sorted pass) and mark dirty rollups."""
        if not self._staged:
            return
        conn = self._require_writer()
        conn.execute("BEGIN")
        try:
            for statement in schema.merge_statements():
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._staged = 0
        self._staged_devs.clear()

    def _require_writer(self) -> sqlite3.Connection:
        if self._write_conn is None:
            raise StorageError("sqlite store is not open")
        return self._write_conn

    def _register_series(self, conn: sqlite3.Connection, device_id: str) -> int:
        conn.execute("INSERT OR IGNORE INTO series (device_id) VALUES (?)", (device_id,))
        (dev,) = conn.execute("SELECT dev FROM series WHERE device_id = ?", (device_id,)).fetchone()
        self._dev_keys[device_id] = dev
        self._dev_fields.setdefault(dev, frozenset())
        return int(dev)

    async def refresh_rollups(self) -> None:
        """Bring every rollup tier up to date with the raw data written so far."""
        await self._on_writer(self._refresh_rollups_sync)

    def _refresh_rollups_sync(self, limit: int | None = None) -> None:
        """Fold dirty (device, day) ranges into every tier: all of them, or ``limit`` of them
        (the rest at the next writes, so that no write waits for the whole backlog)."""
        self._merge_sync()
        conn = self._require_writer()
        dirty = conn.execute(
            "SELECT dev, day, lo, hi FROM rollup_dirty ORDER BY dev, day LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        if limit is None or len(dirty) < limit:
            self._last_rollup = time.monotonic()
        if not dirty:
            return
        finest, *coarser = schema.TIERS
        conn.execute("BEGIN")
        try:
            for dev, _, lo, hi in dirty:
                stored = self._dev_fields.get(dev, frozenset())
                fields = tuple(f for f in AGGREGATABLE_FIELDS if f in stored)
                width = finest.milliseconds
                conn.execute(
                    schema.rollup_from_raw_statement(finest, fields),
                    (dev, lo - lo % width, hi - hi % width + width),
                )
                source = finest
                for tier in coarser:
                    width = tier.milliseconds
                    conn.execute(
                        schema.rollup_from_tier_statement(tier, source, fields),
                        (dev, lo - lo % width, hi - hi % width + width),
                    )
                    source = tier
            conn.executemany(
                "DELETE FROM rollup_dirty WHERE dev = ? AND day = ?",
                [(dev, day) for dev, day, _, _ in dirty],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- reads

    async def query(self, query: TelemetryQuery) -> TelemetryPage:
        """One page of a device's readings, raw or from the matching rollup tier.

        Large pages are built as JSON inside SQLite in two time slices on two reader threads (SQLite
        releases the GIL while it works), then joined.
        """
        if query.every is not None:
            await self.refresh_rollups()
        elif self._dev_keys.get(query.device_id) in self._staged_devs:
            await self._on_writer(self._merge_sync)
        window = await self._on_reader(self._page_window_sync, query)
        if window is None:
            return TelemetryPage(records_json=b"[]", count=0, next_cursor=None)
        dev, start, end, has_more = window
        if not query.fields:
            stored = self._dev_fields.get(dev, frozenset())
            defaults = tuple(f for f in query.selected_fields if f in stored)
            query = dataclasses.replace(query, fields=defaults or query.selected_fields[:1])
        slices = 2 if query.limit > PARALLEL_PAGE_ROWS and end - start > 1 else 1
        bounds = [start + (end - start) * i // slices for i in range(slices + 1)]
        parts = await asyncio.gather(
            *(
                self._on_reader(self._slice_sync, query, dev, lo, hi)
                for lo, hi in itertools.pairwise(bounds)
            )
        )
        if query.order is Order.DESC:
            parts.reverse()
        filled = [part for part in parts if part[1]]
        if not filled:
            return TelemetryPage(records_json=b"[]", count=0, next_cursor=None)
        body = b",".join(part[0][1:-1] for part in filled)
        count = sum(part[1] for part in filled)
        boundary = filled[-1][2] if query.order is Order.DESC else filled[-1][3]
        cursor = encode_cursor(boundary) if has_more else None
        return TelemetryPage(records_json=b"[" + body + b"]", count=count, next_cursor=cursor)

    def _page_window_sync(self, query: TelemetryQuery) -> tuple[int, int, int, bool] | None:
        """The device key and the ``[start, end)`` range holding exactly one page of rows."""
        conn = self._reader()
        found = conn.execute(
            "SELECT dev FROM series WHERE device_id = ?", (query.device_id,)
        ).fetchone()
        if found is None:
            return None
        dev: int = found[0]
        table, time_col = self._source(query)
        start, end = query.start_ms, query.end_ms
        if query.every is not None:
            start -= start % query.every.milliseconds
        descending = query.order is Order.DESC
        if query.after_ms is not None:
            if descending:
                end = min(end, query.after_ms)
            else:
                start = max(start, query.after_ms + 1)
        if start >= end:
            return None
        statement = schema.cutoff_statement(table=table, time_col=time_col, descending=descending)
        cutoff = conn.execute(statement, (dev, start, end, query.limit)).fetchone()
        if cutoff is None:
            return dev, start, end, False
        if descending:
            return dev, cutoff[0] + 1, end, True
        return dev, start, cutoff[0], True

    def _slice_sync(
        self, query: TelemetryQuery, dev: int, start: int, end: int
    ) -> tuple[bytes, int, int, int]:
        """JSON array, row count, first and last time of a device's rows in ``[start, end)``."""
        table, time_col = self._source(query)
        statement = schema.page_statement(
            query.selected_fields,
            table=table,
            time_col=time_col,
            agg=None if query.every is None else query.agg.value,
            descending=query.order is Order.DESC,
        )
        records, count, first, last = (
            self._reader().execute(statement, (dev, start, end)).fetchone()
        )
        return records.encode(), count, first or 0, last or 0

    @staticmethod
    def _source(query: TelemetryQuery) -> tuple[str, str]:
        if query.every is None:
            return "telemetry", "ts"
        return schema.tier_table(query.every), "bucket"

    async def latest(self, device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        """The newest record of each listed device that has data."""
        if self._staged:
            await self._on_writer(self._merge_sync)
        return await self._on_reader(self._latest_sync, list(device_ids))

    def _latest_sync(self, device_ids: list[str]) -> dict[str, dict[str, object]]:
        conn = self._reader()
        names = list(FIELD_TYPES)
        statement = (
            f"SELECT ts, {', '.join(names)} FROM telemetry WHERE dev = "
            "(SELECT dev FROM series WHERE device_id = ?) ORDER BY ts DESC LIMIT 1"
        )
        result: dict[str, dict[str, object]] = {}
        for device_id in device_ids:
            row = conn.execute(statement, (device_id,)).fetchone()
            if row is None:
                continue
            record: dict[str, object] = {"timestamp": EPOCH + row[0] * ONE_MS}
            record.update({n: v for n, v in zip(names, row[1:], strict=True) if v is not None})
            result[device_id] = record
        return result

    # ---------------------------------------------------------------- forecasts

    async def write_forecast(
        self, device_id: str, model: str, issued_at: datetime, points: Sequence[StoredForecastPoint]
    ) -> None:
        """Replace the device's stored power forecast (kW) by this issue."""
        await self._on_writer(
            lambda: forecasts.write(self._require_writer(), device_id, model, issued_at, points)
        )

    async def latest_forecast(self, device_id: str) -> StoredForecast | None:
        """The device's last issued forecast, or None."""
        return await self._on_reader(lambda: forecasts.latest(self._reader(), device_id))

    # ---------------------------------------------------------------- maintenance

    async def delete_device(self, device_id: str) -> None:
        """Delete a device's raw readings, rollups and forecast."""
        await self._on_writer(self._delete_device_sync, device_id)

    def _delete_device_sync(self, device_id: str) -> None:
        self._merge_sync()
        conn = self._require_writer()
        dev = self._dev_keys.get(device_id)
        tables = ["telemetry", "rollup_dirty", *(schema.tier_table(t) for t in schema.TIERS)]
        with conn:
            conn.execute("BEGIN")
            forecasts.delete(conn, device_id)
            if dev is not None:
                for table in tables:
                    conn.execute(f"DELETE FROM {table} WHERE dev = ?", (dev,))

    async def apply_retention(self, older_than_ms: int) -> None:
        """Delete raw readings older than the cut-off; rollup tiers are kept."""
        await self._on_writer(self._retention_sync, older_than_ms)

    def _retention_sync(self, older_than_ms: int) -> None:
        self._merge_sync()
        conn = self._require_writer()
        with conn:
            conn.execute("BEGIN")
            for dev in self._dev_keys.values():
                conn.execute("DELETE FROM telemetry WHERE dev = ? AND ts < ?", (dev, older_than_ms))

    async def health(self) -> StoreHealth:
        """Reachability, file size and rollup backlog."""
        return await self._on_reader(self._health_sync)

    def _health_sync(self) -> StoreHealth:
        conn = self._reader()
        (dirty,) = conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()
        size = self.path.stat().st_size if self.path.exists() else 0
        return StoreHealth(
            backend=self.name,
            reachable=True,
            detail=str(self.path),
            extra={
                "file_bytes": size,
                "rollup_backlog": int(dirty),
                "staged_rows": self._staged,
                "devices": len(self._dev_keys),
            },
        )
