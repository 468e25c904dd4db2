"""The storage contract shared by every backend, and the query/page types it speaks."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from derim.errors import InvalidRequestError, StorageError
from derim.models.telemetry import DERTelemetry, telemetry_fields

FIELD_TYPES: dict[str, type] = telemetry_fields()
"""Every canonical measurement field and its value type (``float``, ``int`` or ``str``)."""

AGGREGATABLE_FIELDS: tuple[str, ...] = tuple(n for n, t in FIELD_TYPES.items() if t is float)
"""Fields that downsampling can aggregate (the real-valued ones)."""


class Interval(StrEnum):
    """Downsampling bucket widths; buckets are aligned to UTC multiples of the width."""

    MINUTE = "1m"
    QUARTER_HOUR = "15m"
    HOUR = "1h"
    DAY = "1d"

    @property
    def milliseconds(self) -> int:
        """Bucket width in milliseconds."""
        return {"1m": 60_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}[self.value]


class Aggregation(StrEnum):
    """How a bucket's values are combined."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    SUM = "sum"


class Order(StrEnum):
    """Time order of a page."""

    ASC = "asc"
    DESC = "desc"


def to_epoch_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch; naive datetimes are read as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def from_epoch_ms(value: int) -> datetime:
    """The UTC datetime of ``value`` milliseconds since the epoch."""
    return datetime.fromtimestamp(value / 1000, tz=UTC)


MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last instant a datetime holds: no cursor names a later one."""


def encode_cursor(boundary_ms: int) -> str:
    """An opaque cursor naming the last timestamp a page returned."""
    return base64.urlsafe_b64encode(f"v1:{boundary_ms}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The boundary timestamp inside a cursor made by :func:`encode_cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, _, value = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        boundary = int(value)
        if version != "v1" or not 0 <= boundary <= MAX_EPOCH_MS:
            raise ValueError(version)
        return boundary
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequestError("cursor", "not a cursor this server issued") from exc


@dataclass(frozen=True, slots=True)
class TelemetryQuery:
    """A time-range query for one device. ``start`` is inclusive, ``end`` exclusive (epoch ms)."""

    device_id: str
    start_ms: int
    end_ms: int
    fields: tuple[str, ...] = ()
    every: Interval | None = None
    agg: Aggregation = Aggregation.MEAN
    limit: int = 10_000
    order: Order = Order.ASC
    after_ms: int | None = None
    """Continue after this timestamp (from a cursor): later for ASC, earlier for DESC."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in FIELD_TYPES]
        if unknown:
            raise InvalidRequestError("fields", f"unknown field(s) {', '.join(unknown)}")
        if self.end_ms <= self.start_ms:
            raise InvalidRequestError("end", "must be after start")
        if not 1 <= self.limit <= 100_000:
            raise InvalidRequestError("limit", "must be between 1 and 100000")
        if self.every is not None:
            bad = [f for f in self.fields if f not in AGGREGATABLE_FIELDS]
            if bad:
                raise InvalidRequestError("fields", f"cannot aggregate {', '.join(bad)}")

    @property
    def selected_fields(self) -> tuple[str, ...]:
        """The fields to return: those asked for, else all (all numeric when downsampling)."""
        if self.fields:
            return self.fields
        return AGGREGATABLE_FIELDS if self.every is not None else tuple(FIELD_TYPES)


@dataclass(frozen=True, slots=True)
class TelemetryPage:
    """One page of a query: ``records_json`` is a JSON array of objects keyed by field name.

    Every object has ``timestamp`` (ISO 8601 UTC) and the selected fields (null when absent).
    ``next_cursor`` is set when more data lies in the window beyond this page.
    """

    records_json: bytes
    count: int
    next_cursor: str | None


@dataclass(slots=True)
class StoreHealth:
    """What a backend reports about itself for ``/health``."""

    backend: str
    reachable: bool
    detail: str = ""
    extra: dict[str, int | float | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredForecastPoint:
    """One step of a stored power forecast: its interval start (UTC) and P10/P50/P90 in kW."""

    time: datetime
    p10: float
    p50: float
    p90: float


@dataclass(frozen=True, slots=True)
class StoredForecast:
    """A device's last issued power forecast: the model, when it was issued, its steps."""

    device_id: str
    model: str
    issued_at: datetime
    points: tuple[StoredForecastPoint, ...]


def forecast_rows(points: Sequence[StoredForecastPoint]) -> list[tuple[int, float, float, float]]:
    """``(epoch ms, p10, p50, p90)`` rows of a forecast; ``StorageError`` on a non-finite value."""
    rows = [(to_epoch_ms(p.time), float(p.p10), float(p.p50), float(p.p90)) for p in points]
    if not all(math.isfinite(v) for row in rows for v in row[1:]):
        raise StorageError("forecast values must be finite numbers")
    return rows


class Store(Protocol):
    """A telemetry time-series backend."""

    name: str

    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Flush and release resources."""

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        """Durably store ``records``; raise ``StorageUnavailableError`` if the backend is down."""

    async def query(self, query: TelemetryQuery) -> TelemetryPage:
        """One page of raw or downsampled telemetry for one device."""

    async def latest(self, device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        """The most recent record of each device that has data, as a field dict."""

    async def write_forecast(
        self, device_id: str, model: str, issued_at: datetime, points: Sequence[StoredForecastPoint]
    ) -> None:
        """Store a power forecast (kW) issued at ``issued_at``; it becomes the device's latest."""

    async def latest_forecast(self, device_id: str) -> StoredForecast | None:
        """The forecast last issued for the device, or None when it has none."""

    async def delete_device(self, device_id: str) -> None:
        """Delete every stored reading and forecast of one device."""

    async def apply_retention(self, older_than_ms: int) -> None:
        """Delete raw readings older than ``older_than_ms`` (epoch ms)."""

    async def health(self) -> StoreHealth:
        """Reachability and size figures."""
