"""Stored telemetry as a regular series for the twin (mean per 15-min or hourly bucket)."""

from __future__ import annotations

from datetime import datetime

import orjson
import pandas as pd

from derim.errors import TwinError
from derim.storage.base import (
    Interval,
    Store,
    TelemetryQuery,
    decode_cursor,
    to_epoch_ms,
)
from derim.twin.timeseries import regularise

INTERVALS = {pd.Timedelta(minutes=15): Interval.QUARTER_HOUR, pd.Timedelta(hours=1): Interval.HOUR}
PAGE_LIMIT = 100_000


def interval_for(freq: pd.Timedelta) -> Interval:
    """The storage bucket width matching ``freq`` (15 min or 1 h)."""
    interval = INTERVALS.get(freq)
    if interval is None:
        raise TwinError(f"step {freq} is not supported for stored data; use 15min or 1h")
    return interval


async def load_history(
    store: Store, device_id: str, field: str, start: datetime, end: datetime, freq: pd.Timedelta
) -> pd.Series:
    """Bucket means of ``field`` in [start, end) on a regular UTC index; missing buckets are NaN."""
    interval = interval_for(freq)
    stamps: list[str] = []
    values: list[float | None] = []
    after: int | None = None
    while True:
        query = TelemetryQuery(
            device_id,
            to_epoch_ms(start),
            to_epoch_ms(end),
            fields=(field,),
            every=interval,
            limit=PAGE_LIMIT,
            after_ms=after,
        )
        page = await store.query(query)
        for record in orjson.loads(page.records_json):
            stamps.append(record["timestamp"])
            values.append(record.get(field))
        if page.next_cursor is None:
            break
        after = decode_cursor(page.next_cursor)
    index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    series = pd.Series(values, index=index, dtype=float, name=field).dropna()
    if series.empty:
        raise TwinError(f"device {device_id!r} has no {field} readings between {start} and {end}")
    grid = pd.date_range(
        pd.Timestamp(start).tz_convert("UTC").floor(freq),
        pd.Timestamp(end).tz_convert("UTC").ceil(freq) - freq,
        freq=freq,
    )
    return regularise(series, freq).reindex(grid)
