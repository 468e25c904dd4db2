"""The InfluxDB 1.x backend over the v1 HTTP API: line protocol in, InfluxQL with bound params out.

Readings go to measurement ``telemetry`` with the tag ``device_id`` and one field per canonical
field, written with millisecond precision in chunks of ``CHUNK_POINTS`` lines, a few chunks in
flight at once. Queries never carry text from the caller: the device id travels as a bound
parameter (``$device_id``), field names come from the canonical whitelist and times are integers
this module computes. Downsampling is ``GROUP BY time()`` (buckets aligned to UTC multiples of the
width), always bounded on both sides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any

import httpx
import orjson

from derim.errors import StorageError, StorageUnavailableError
from derim.models.telemetry import DERTelemetry
from derim.storage import influx_forecast as forecasts
from derim.storage.base import (
    FIELD_TYPES,
    Aggregation,
    Order,
    StoredForecast,
    StoredForecastPoint,
    StoreHealth,
    TelemetryPage,
    TelemetryQuery,
    encode_cursor,
    forecast_rows,
    to_epoch_ms,
)

log = logging.getLogger(__name__)

MEASUREMENT = "telemetry"
TAG = "device_id"
RETENTION_POLICY = "derim"
CHUNK_POINTS = 5_000
"""Lines per ``/write`` request."""
WRITE_CONCURRENCY = 4
"""``/write`` requests in flight at once during one large write."""
LATEST_BATCH = 100
"""Devices per ``latest`` statement."""
MIN_RETENTION_MINUTES = 60
"""InfluxDB refuses retention policies shorter than one hour."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000
NS_PER_MS = 1_000_000
MIN_NS = -9_223_372_036_854_775_806
MAX_NS = 9_223_372_036_854_775_806
"""The instants InfluxDB can store, in nanoseconds since the epoch."""

EMPTY_PAGE = TelemetryPage(records_json=b"[]", count=0, next_cursor=None)
UNSET = b"null"
"""How an unset value comes out of column formatting (texts are always quoted, so never clash)."""

_QUOTED_FIELDS = {name: f'"{name}"' for name in FIELD_TYPES}
_AGGREGATES = {
    Aggregation.MEAN: "mean",
    Aggregation.MIN: "min",
    Aggregation.MAX: "max",
    Aggregation.LAST: "last",
    Aggregation.SUM: "sum",
}
_UNREPRESENTABLE_TAG = re.compile(r"[\\\r\n]|^$")
"""Tag values InfluxDB 1.x cannot round-trip (it never unescapes backslashes in tags)."""
_RECORD_DICT = attrgetter("__dict__")


class _DatabaseMissingError(StorageError):
    """The database does not exist (never created, or dropped while we were running)."""


# ---------------------------------------------------------------- line protocol


def _tag_value(value: str, what: str = "device id") -> str:
    """A tag value with commas, equals signs and spaces escaped for line protocol."""
    if _UNREPRESENTABLE_TAG.search(value):
        raise StorageError(f"{what} {value!r} cannot be stored as an InfluxDB tag")
    return value.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


@functools.lru_cache(maxsize=65_536)
def _series_key(device_id: str) -> bytes:
    """``telemetry,device_id=<id>``, escaped (cached per id)."""
    return f"{MEASUREMENT},{TAG}={_tag_value(device_id)}".encode()


def _quote_text(value: object) -> bytes:
    """A string field value in double quotes, with backslashes and quotes escaped."""
    text = str(value)
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + text.encode() + b'"'


def _format_column(kind: type, column: tuple[object, ...]) -> list[bytes]:
    """Line-protocol values of one field across records; unset values are ``UNSET``.

    Numbers go through one ``orjson`` call (shortest round-trip form, far faster than ``repr``);
    texts through a cache of the distinct values.
    """
    if kind is str:
        quoted = {v: UNSET if v is None else _quote_text(v) for v in set(column)}
        return list(map(quoted.__getitem__, column))
    return orjson.dumps(column)[1:-1].split(b",")


class _LineEncoder:
    """Turns records of one telemetry class into line protocol, one column at a time.

    Fields set in every record of a chunk fill a ``%`` template; fields set in only some records
    carry their own leading comma (empty where unset); fields set in none are left out.
    """

    def __init__(self, cls: type[DERTelemetry]) -> None:
        self.fields = tuple(n for n in cls.model_fields if n in FIELD_TYPES)
        self._values = itemgetter(TAG, "timestamp", *self.fields)
        self._templates: dict[tuple[tuple[str, ...], int], bytes] = {}

    def lines(self, records: Sequence[DERTelemetry]) -> list[bytes]:
        """One line per record (``records`` must not be empty)."""
        devices, stamps, *columns = zip(*map(self._values, map(_RECORD_DICT, records)), strict=True)
        count = len(records)
        dense: list[str] = []
        values: list[list[bytes]] = []
        sparse: list[list[bytes]] = []
        for name, column in zip(self.fields, columns, strict=True):
            unset = column.count(None)
            if unset == count:
                continue
            kind = FIELD_TYPES[name]
            formatted = _format_column(kind, column)
            if unset == 0:
                dense.append(name)
                values.append(formatted)
            else:
                lead = f",{name}=".encode()
                suffix = b"i" if kind is int else b""
                sparse.append([b"" if v == UNSET else lead + v + suffix for v in formatted])
        keys = {d: _series_key(d) for d in set(devices)}
        instants = {t: (t - EPOCH) // ONE_MS for t in set(stamps)}  # readings share poll ticks
        keyed = map(keys.__getitem__, devices)
        times = map(instants.__getitem__, stamps)
        template = self._template(tuple(dense), len(sparse))
        lines = list(map(template.__mod__, zip(keyed, *values, *sparse, times, strict=True)))
        if not dense:
            # every field carried its own comma: drop the one opening the field set
            lines = [line.replace(b" ,", b" ", 1) for line in lines]
        return lines

    def _template(self, dense: tuple[str, ...], sparse: int) -> bytes:
        template = self._templates.get((dense, sparse))
        if template is None:
            fields = ",".join(f"{n}=%b{'i' if FIELD_TYPES[n] is int else ''}" for n in dense)
            template = f"%b {fields}{'%b' * sparse} %d".encode()
            self._templates[(dense, sparse)] = template
        return template


@functools.cache
def _encoder(cls: type[DERTelemetry]) -> _LineEncoder:
    return _LineEncoder(cls)


def encode_lines(records: Sequence[DERTelemetry]) -> bytes:
    """Line protocol (millisecond timestamps) for ``records``, grouped by telemetry class."""
    groups: dict[type[DERTelemetry], list[DERTelemetry]] = {}
    for record in records:
        group = groups.get(type(record))
        if group is None:
            group = groups[type(record)] = []
        group.append(record)
    try:
        lines = [line for cls, group in groups.items() for line in _encoder(cls).lines(group)]
    except orjson.JSONEncodeError as exc:
        raise StorageError(f"cannot encode telemetry for InfluxDB: {exc}") from exc
    return b"\n".join(lines)


# ---------------------------------------------------------------- InfluxQL helpers


def _quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _to_ns(ms: int) -> int:
    """Epoch milliseconds as nanoseconds, clamped to what InfluxDB can represent."""
    return min(max(ms * NS_PER_MS, MIN_NS), MAX_NS)


def _shard_duration(retention_minutes: int) -> str:
    """InfluxDB's own default shard group length for a retention policy of that length."""
    if retention_minutes < 2 * 1440:
        return "1h"
    return "1d" if retention_minutes <= 182 * 1440 else "7d"


@functools.lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    return (EPOCH + timedelta(days=day)).date().isoformat() + "T"


_HOURS = [f"{h:02d}:" for h in range(24)]
_MINUTES_SECONDS = [f"{s // 60:02d}:{s % 60:02d}" for s in range(3600)]
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]


def iso_ms(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for epoch milliseconds (from lookup tables: pages are large)."""
    day, rest = divmod(ms, DAY_MS)
    hour, rest = divmod(rest, 3_600_000)
    second, milli = divmod(rest, 1000)
    return _day_prefix(day) + _HOURS[hour] + _MINUTES_SECONDS[second] + _MILLIS[milli]


def _page_window(query: TelemetryQuery) -> tuple[int, int] | None:
    """The ``[start, end)`` range in ns one page reads, or None when it is empty.

    Downsampled windows widen to whole buckets (a bucket belongs to the window when it starts
    inside it), as in the SQLite backend; a cursor moves the near edge past the last returned row.
    """
    start, end = query.start_ms, query.end_ms
    width = query.every.milliseconds if query.every is not None else 1
    start -= start % width
    end += -end % width
    if query.after_ms is not None:
        if query.order is Order.DESC:
            end = min(end, query.after_ms)
        else:
            after = query.after_ms + 1
            start = max(start, after + -after % width)
    start_ns, end_ns = _to_ns(start), _to_ns(end)
    return (start_ns, end_ns) if start_ns < end_ns else None


def _select_statement(query: TelemetryQuery) -> str:
    """The InfluxQL of one page; parameters ``$device_id``, ``$start`` and ``$end`` (ns)."""
    order = "DESC" if query.order is Order.DESC else "ASC"
    where = f"WHERE {_quote_ident(TAG)} = $device_id AND time >= $start AND time < $end"
    tail = f"ORDER BY time {order} LIMIT {int(query.limit) + 1:d}"
    source = _quote_ident(MEASUREMENT)
    if query.every is None:
        columns = ", ".join(_QUOTED_FIELDS[f] for f in query.fields) if query.fields else "*"
        return f"SELECT {columns} FROM {source} {where} {tail}"
    agg = _AGGREGATES[query.agg]
    columns = ", ".join(
        f"{agg}({_QUOTED_FIELDS[f]}) AS {_QUOTED_FIELDS[f]}" for f in query.selected_fields
    )
    width = f"{int(query.every.milliseconds):d}ms"
    return f"SELECT {columns} FROM {source} {where} GROUP BY time({width}) fill(none) {tail}"


def _page_body(
    query: TelemetryQuery, columns: list[str], rows: list[list[Any]]
) -> tuple[bytes, int]:
    """The JSON array of a page's rows in the SQLite backend's shape, and its last row's time (ms).

    Asked-for fields are always present (null when unset); by default only fields with data.
    """
    table = list(zip(*rows, strict=True))
    position = {name: i for i, name in enumerate(columns)}
    unset = (None,) * len(rows)
    names: list[str] = []
    values: list[tuple[Any, ...]] = []
    for name in query.selected_fields:
        index = position.get(name)
        column = unset if index is None else table[index]
        if not query.fields and column.count(None) == len(rows):
            continue
        names.append(name)
        values.append(column)
    keys = ("timestamp", *names)
    stamps = map(iso_ms, table[0])
    records = [dict(zip(keys, row, strict=False)) for row in zip(stamps, *values, strict=True)]
    return orjson.dumps(records), table[0][-1]


def _error_message(response: httpx.Response) -> str:
    """InfluxDB's explanation of a failed request."""
    header = response.headers.get("X-Influxdb-Error")
    if header:
        return str(header)
    try:
        return str(orjson.loads(response.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase


# ---------------------------------------------------------------- the store


class InfluxStore:
    """Telemetry in an InfluxDB 1.x database, over its v1 HTTP API."""

    name = "influxdb"

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        retention_days: float | None = None,
    ) -> None:
        """``timeout_s`` bounds each HTTP request; ``retention_days`` sets the default policy."""
        self.url = url
        self.database = database
        self.retention_days = retention_days
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._client = httpx.AsyncClient(base_url=url, auth=auth, timeout=timeout_s)
        self._write_params = {"db": database, "precision": "ms"}
        self._database_ready = False
        self._schema_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the database (and retention policy) if needed.

        Raises ``StorageUnavailableError`` when InfluxDB cannot be reached; the store stays usable
        and creates the database on its next successful write or query.
        """
        await self._ensure_database()

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    async def _ensure_database(self) -> None:
        async with self._schema_lock:
            if self._database_ready:
                return
            database = _quote_ident(self.database)
            await self._run(f"CREATE DATABASE {database}", use_database=False)
            if self.retention_days is not None:
                await self._ensure_retention(database, self.retention_days)
            self._database_ready = True
            log.info("influxdb database %s ready at %s", self.database, self.url)

    async def _ensure_retention(self, database: str, days: float) -> None:
        """Make ``RETENTION_POLICY`` the database's default policy with a ``days`` duration."""
        minutes = max(MIN_RETENTION_MINUTES, math.ceil(days * 1440))
        policies = await self._run(f"SHOW RETENTION POLICIES ON {database}", use_database=False)
        names = {row[0] for series in policies for row in series.get("values", [])}
        policy = _quote_ident(RETENTION_POLICY)
        duration = f"DURATION {minutes:d}m"
        shards = f"SHARD DURATION {_shard_duration(minutes)}"
        if RETENTION_POLICY in names:
            statement = f"ALTER RETENTION POLICY {policy} ON {database} {duration} {shards} DEFAULT"
        else:
            statement = (
                f"CREATE RETENTION POLICY {policy} ON {database} {duration} REPLICATION 1 "
                f"{shards} DEFAULT"
            )
        await self._run(statement, use_database=False)

    # ---------------------------------------------------------------- HTTP

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to InfluxDB, translating failures into the storage error tree."""
        try:
            response = await self._client.post(path, **kwargs)
        except httpx.TransportError as exc:
            raise StorageUnavailableError(
                f"influxdb at {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.is_success:
            return response
        message = _error_message(response)
        status = response.status_code
        if status >= 500 or status in (401, 403):
            # Server faults and refused credentials are conditions of the store, not of the
            # data: writes are spooled until an operator fixes them.
            raise StorageUnavailableError(
                f"influxdb at {self.url} failed: HTTP {status}: {message}"
            )
        if status == 404 and message.startswith("database not found"):
            raise _DatabaseMissingError(f"influxdb: {message}")
        raise StorageError(f"influxdb rejected the request: HTTP {status}: {message}")

    async def _run(
        self, statement: str, params: dict[str, Any] | None = None, *, use_database: bool = True
    ) -> list[dict[str, Any]]:
        """Run one InfluxQL statement (times in epoch ms) and return its series."""
        form = {"q": statement, "epoch": "ms"}
        if use_database:
            form["db"] = self.database
        if params:
            form["params"] = orjson.dumps(params).decode()
        response = await self._post("/query", data=form)
        try:
            results = orjson.loads(response.content)["results"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise StorageError(
                f"influxdb sent an unreadable answer: {response.text[:200]}"
            ) from exc
        for result in results:
            if "error" in result:
                raise StorageError(f"influxdb: {result['error']}")
        series: list[dict[str, Any]] = results[0].get("series", []) if results else []
        return series

    async def _select(self, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if not self._database_ready:
            await self._ensure_database()
        return await self._run(statement, params)

    # ---------------------------------------------------------------- writes

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        """Store records in chunks of ``CHUNK_POINTS`` lines, ``WRITE_CONCURRENCY`` in flight.

        A failure stops the write and is raised after the other requests are cancelled; chunks
        already stored stay stored (a retry overwrites them with the same values).
        """
        if not records:
            return
        if not self._database_ready:
            await self._ensure_database()
        pending: set[asyncio.Task[None]] = set()
        try:
            for first in range(0, len(records), CHUNK_POINTS):
                chunk = records[first : first + CHUNK_POINTS]
                body = await asyncio.to_thread(encode_lines, chunk)
                if len(pending) >= WRITE_CONCURRENCY:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first_failure(done)
                pending.add(asyncio.create_task(self._write_body(body)))
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                _raise_first_failure(done)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _write_body(self, body: bytes) -> None:
        """POST one chunk; if the database vanished, create it again and retry once."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        try:
            await self._post("/write", params=self._write_params, content=body, headers=headers)
        except _DatabaseMissingError:
            log.warning("influxdb database %s is missing, creating it again", self.database)
            self._database_ready = False
            await self._ensure_database()
            await self._post("/write", params=self._write_params, content=body, headers=headers)

    async def write_forecast(
        self, device_id: str, model: str, issued_at: datetime, points: Sequence[StoredForecastPoint]
    ) -> None:
        """Write a power forecast (kW) to measurement ``forecast``, one point per step at its
        target time (an empty one is ignored)."""
        rows = forecast_rows(points)
        if not rows:
            return
        body = forecasts.forecast_lines(
            _tag_value(device_id), _tag_value(model, "model"), to_epoch_ms(issued_at), rows
        )
        if not self._database_ready:
            await self._ensure_database()
        await self._write_body(body)

    async def latest_forecast(self, device_id: str) -> StoredForecast | None:
        """The device's last issued forecast (largest ``issued_ms``), or None."""
        found = await self._select(forecasts.LATEST_ISSUE, {"device_id": device_id})
        issued_ms = forecasts.latest_issue_ms(found)
        if issued_ms is None:
            return None
        params = {"device_id": device_id, "issued_ms": issued_ms}
        steps = await self._select(forecasts.ISSUE_POINTS, params)
        return forecasts.stored_forecast(device_id, issued_ms, steps)

    # ---------------------------------------------------------------- reads

    async def query(self, query: TelemetryQuery) -> TelemetryPage:
        """One page of a device's readings, raw or downsampled by ``GROUP BY time()``."""
        window = _page_window(query)
        if window is None:
            return EMPTY_PAGE
        params = {"device_id": query.device_id, "start": window[0], "end": window[1]}
        found = await self._select(_select_statement(query), params)
        if not found or not found[0].get("values"):
            return EMPTY_PAGE
        series = found[0]
        rows: list[list[Any]] = series["values"]
        has_more = len(rows) > query.limit or bool(series.get("partial"))
        rows = rows[: query.limit]
        body, last_ms = _page_body(query, series["columns"], rows)
        cursor = encode_cursor(last_ms) if has_more else None
        return TelemetryPage(records_json=body, count=len(rows), next_cursor=cursor)

    async def latest(self, device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        """The newest record of each listed device that has data (timestamp as UTC datetime)."""
        wanted = list(dict.fromkeys(device_ids))
        result: dict[str, dict[str, object]] = {}
        for first in range(0, len(wanted), LATEST_BATCH):
            batch = wanted[first : first + LATEST_BATCH]
            params = {f"d{i}": device_id for i, device_id in enumerate(batch)}
            match = " OR ".join(f"{_quote_ident(TAG)} = $d{i}" for i in range(len(batch)))
            statement = (
                f"SELECT * FROM {_quote_ident(MEASUREMENT)} WHERE {match} "
                f"GROUP BY {_quote_ident(TAG)} ORDER BY time DESC LIMIT 1"
            )
            for series in await self._select(statement, params):
                time_ms, *values = series["values"][0]
                record: dict[str, object] = {"timestamp": EPOCH + time_ms * ONE_MS}
                for name, value in zip(series["columns"][1:], values, strict=True):
                    if value is not None and name in FIELD_TYPES:
                        record[name] = FIELD_TYPES[name](value)
                result[series["tags"][TAG]] = record
        return result

    # ---------------------------------------------------------------- maintenance

    async def delete_device(self, device_id: str) -> None:
        """Drop the device's series (every reading it has) and its forecasts."""
        statement = f"DROP SERIES FROM {_quote_ident(MEASUREMENT)} WHERE {_quote_ident(TAG)} = $id"
        await self._select(statement, {"id": device_id})
        await self._select(forecasts.DROP_DEVICE, {"id": device_id})

    async def apply_retention(self, older_than_ms: int) -> None:
        """Delete readings older than ``older_than_ms`` (epoch ms).

        The bound is an integer literal: InfluxDB 1.6 ignores bound parameters in a ``DELETE``
        time condition and would delete everything.
        """
        cutoff_ns = _to_ns(int(older_than_ms))
        await self._select(
            f"DELETE FROM {_quote_ident(MEASUREMENT)} WHERE time < {cutoff_ns:d}", {}
        )

    async def health(self) -> StoreHealth:
        """Reachability from ``/ping``, with the server version and round-trip time (ms)."""
        started = time.perf_counter()
        try:
            response = await self._client.get("/ping")
        except httpx.TransportError as exc:
            return StoreHealth(
                backend=self.name,
                reachable=False,
                detail=self.url,
                extra={"error": f"{type(exc).__name__}: {exc}", "database": self.database},
            )
        return StoreHealth(
            backend=self.name,
            reachable=response.status_code == 204,
            detail=self.url,
            extra={
                "database": self.database,
                "version": response.headers.get("X-Influxdb-Version", "unknown"),
                "ping_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )


def _raise_first_failure(done: set[asyncio.Task[None]]) -> None:
    """Re-raise the first exception among finished tasks (reading every one of them)."""
    errors = [task.exception() for task in done if not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
