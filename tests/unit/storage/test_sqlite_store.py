"""The SQLite backend: round trips, pagination, downsampling tiers, retention."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from derim.models import BatteryTelemetry, DERTelemetry, MeterTelemetry
from derim.storage.base import (
    Aggregation,
    Interval,
    Order,
    TelemetryQuery,
    decode_cursor,
    to_epoch_ms,
)
from derim.storage.sqlite import SQLiteStore

T0 = datetime(2024, 3, 1, tzinfo=UTC)
FAR = to_epoch_ms(datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "t.db")
    await s.open()
    yield s
    await s.close()


def q(device_id: str, **kw: Any) -> TelemetryQuery:
    return TelemetryQuery(**{"device_id": device_id, "start_ms": 0, "end_ms": FAR, **kw})


async def all_pages(store: SQLiteStore, query: TelemetryQuery) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for _ in range(10_000):
        page = await store.query(query)
        rows += orjson.loads(page.records_json)
        if page.next_cursor is None:
            return rows
        query = dataclasses.replace(query, after_ms=decode_cursor(page.next_cursor))
    raise AssertionError("pagination did not end")


async def test_round_trip_keeps_values_and_utc_instant(store: SQLiteStore) -> None:
    """What is written reads back field for field, with the UTC timestamp."""
    record = BatteryTelemetry(
        device_id="b1",
        timestamp="2024-03-01T02:00:00.123+02:00",
        power_kw=-3.25,
        soc_percent=55.5,
        state="charging",
    )
    await store.write([record])
    page = await store.query(q("b1"))
    assert orjson.loads(page.records_json) == [
        {
            "timestamp": "2024-03-01T00:00:00.123Z",
            "power_kw": -3.25,
            "soc_percent": 55.5,
            "state": "charging",
        }
    ]
    assert page.count == 1
    assert page.next_cursor is None


async def test_unknown_device_reads_empty(store: SQLiteStore) -> None:
    """A device with no data gives an empty page, not an error."""
    page = await store.query(q("ghost"))
    assert (page.records_json, page.count, page.next_cursor) == (b"[]", 0, None)


async def test_same_instant_readings_merge_fields(store: SQLiteStore) -> None:
    """Two readings at the same instant fill each other's gaps; later values win."""
    await store.write([MeterTelemetry(device_id="m", timestamp=T0, power_kw=1.0)])
    await store.write(
        [MeterTelemetry(device_id="m", timestamp=T0, power_kw=2.0, energy_import_kwh=9.0)]
    )
    await store.write([MeterTelemetry(device_id="m", timestamp=T0, power_factor=0.9)])
    rows = orjson.loads((await store.query(q("m"))).records_json)
    assert rows == [
        {
            "timestamp": "2024-03-01T00:00:00.000Z",
            "power_kw": 2.0,
            "energy_import_kwh": 9.0,
            "power_factor": 0.9,
        }
    ]


@pytest.mark.parametrize("order", [Order.ASC, Order.DESC])
@pytest.mark.parametrize("limit", [1, 7, 100, 6000])
async def test_pagination_returns_every_row_once(
    store: SQLiteStore, order: Order, limit: int
) -> None:
    """Following cursors visits each row exactly once, in order, newest included."""
    n = 12_345 if limit == 6000 else 250
    records = [
        DERTelemetry(device_id="d", timestamp=T0 + timedelta(seconds=i), power_kw=float(i))
        for i in range(n)
    ]
    await store.write(records)
    rows = await all_pages(store, q("d", limit=limit, order=order, fields=("power_kw",)))
    values = [r["power_kw"] for r in rows]
    expected = [float(i) for i in range(n)]
    assert values == (expected if order is Order.ASC else expected[::-1])


async def test_window_bounds_are_start_inclusive_end_exclusive(store: SQLiteStore) -> None:
    """[start, end) selects exactly the readings inside."""
    await store.write(
        [DERTelemetry(device_id="d", timestamp=T0 + timedelta(minutes=i)) for i in range(10)]
    )
    start = to_epoch_ms(T0 + timedelta(minutes=2))
    end = to_epoch_ms(T0 + timedelta(minutes=5))
    page = await store.query(q("d", start_ms=start, end_ms=end, fields=("quality",)))
    stamps = [r["timestamp"] for r in orjson.loads(page.records_json)]
    assert stamps == [f"2024-03-01T00:0{m}:00.000Z" for m in (2, 3, 4)]


async def test_default_fields_are_those_with_data(store: SQLiteStore) -> None:
    """Without ``fields`` a page lists the fields the device has reported, not all 22."""
    await store.write([BatteryTelemetry(device_id="b", timestamp=T0, soc_percent=40)])
    await store.write(
        [BatteryTelemetry(device_id="b", timestamp=T0 + timedelta(seconds=1), power_kw=1)]
    )
    rows = orjson.loads((await store.query(q("b"))).records_json)
    assert set(rows[0]) == {"timestamp", "power_kw", "soc_percent"}


def expected_buckets(
    values: list[tuple[datetime, float]], width: timedelta, agg: str
) -> list[tuple[str, float]]:
    buckets: dict[datetime, list[float]] = {}
    for moment, value in values:
        start = T0 + ((moment - T0) // width) * width
        buckets.setdefault(start, []).append(value)
    combine = {
        "mean": statistics.fmean,
        "min": min,
        "max": max,
        "sum": sum,
        "last": lambda xs: xs[-1],
    }[agg]
    return [(k.strftime("%Y-%m-%dT%H:%M:%S.000Z"), combine(v)) for k, v in sorted(buckets.items())]


@pytest.mark.parametrize("agg", list(Aggregation))
@pytest.mark.parametrize("every", [Interval.MINUTE, Interval.QUARTER_HOUR, Interval.HOUR])
async def test_downsampling_matches_python(
    store: SQLiteStore, agg: Aggregation, every: Interval
) -> None:
    """Every tier and aggregation agrees with the same computation done in Python."""
    rng = random.Random(1)
    values = [(T0 + timedelta(seconds=7 * i), round(rng.uniform(-5, 5), 3)) for i in range(2000)]
    shuffled = values[:]
    rng.shuffle(shuffled)
    for k in range(0, len(shuffled), 300):
        await store.write(
            [DERTelemetry(device_id="d", timestamp=t, power_kw=v) for t, v in shuffled[k : k + 300]]
        )
    page = await store.query(q("d", every=every, agg=agg, fields=("power_kw",)))
    got = [(r["timestamp"], r["power_kw"]) for r in orjson.loads(page.records_json)]
    want = expected_buckets(values, timedelta(milliseconds=every.milliseconds), agg.value)
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-9)


async def test_tiers_follow_late_and_corrected_data(store: SQLiteStore) -> None:
    """A reading arriving late, or correcting an earlier one, updates every tier."""
    await store.write([DERTelemetry(device_id="d", timestamp=T0, power_kw=1.0)])
    hourly = q("d", every=Interval.HOUR, agg=Aggregation.SUM, fields=("power_kw",))
    assert orjson.loads((await store.query(hourly)).records_json)[0]["power_kw"] == 1.0
    await store.write([DERTelemetry(device_id="d", timestamp=T0, power_kw=4.0)])
    await store.write(
        [DERTelemetry(device_id="d", timestamp=T0 + timedelta(minutes=59), power_kw=2.0)]
    )
    assert orjson.loads((await store.query(hourly)).records_json)[0]["power_kw"] == 6.0
    daily = q("d", every=Interval.DAY, agg=Aggregation.MAX, fields=("power_kw",))
    assert orjson.loads((await store.query(daily)).records_json)[0]["power_kw"] == 4.0


async def test_downsampled_pages_paginate(store: SQLiteStore) -> None:
    """Cursor pagination works over tier buckets too."""
    await store.write(
        [
            DERTelemetry(device_id="d", timestamp=T0 + timedelta(minutes=i), power_kw=1.0)
            for i in range(300)
        ]
    )
    rows = await all_pages(store, q("d", every=Interval.MINUTE, agg=Aggregation.SUM, limit=40))
    assert len(rows) == 300


async def test_latest_is_the_newest_reading(store: SQLiteStore) -> None:
    """latest() returns the newest record per device, with its UTC time."""
    await store.write(
        [
            DERTelemetry(device_id="a", timestamp=T0 + timedelta(seconds=s), power_kw=float(s))
            for s in (5, 1, 9, 3)
        ]
    )
    latest = await store.latest(["a", "none"])
    assert set(latest) == {"a"}
    assert latest["a"]["timestamp"] == T0 + timedelta(seconds=9)
    assert latest["a"]["power_kw"] == 9.0


async def test_retention_and_delete(store: SQLiteStore) -> None:
    """Retention removes old raw rows; delete_device removes a device's data."""
    old = DERTelemetry(device_id="a", timestamp=T0 - timedelta(days=40), power_kw=1.0)
    new = DERTelemetry(device_id="a", timestamp=T0, power_kw=2.0)
    other = DERTelemetry(device_id="b", timestamp=T0, power_kw=3.0)
    await store.write([old, new, other])
    await store.apply_retention(to_epoch_ms(T0 - timedelta(days=30)))
    rows = orjson.loads((await store.query(q("a", fields=("power_kw",)))).records_json)
    assert [r["power_kw"] for r in rows] == [2.0]
    await store.delete_device("a")
    assert (await store.query(q("a"))).count == 0
    assert (await store.query(q("b"))).count == 1


async def test_data_survives_reopen(tmp_path: Path) -> None:
    """Rows, device keys and field lists persist across restarts."""
    first = SQLiteStore(tmp_path / "p.db")
    await first.open()
    await first.write([BatteryTelemetry(device_id="b", timestamp=T0, soc_percent=12)])
    await first.close()
    second = SQLiteStore(tmp_path / "p.db")
    await second.open()
    await second.write([BatteryTelemetry(device_id="c", timestamp=T0, soc_percent=13)])
    rows = orjson.loads((await second.query(q("b"))).records_json)
    await second.close()
    assert rows == [{"timestamp": "2024-03-01T00:00:00.000Z", "soc_percent": 12.0}]


async def test_older_schema_gains_new_columns(tmp_path: Path) -> None:
    """Opening a database made before a field existed adds that column."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE telemetry (dev INTEGER NOT NULL, ts INTEGER NOT NULL, "
            "power_kw REAL, PRIMARY KEY (dev, ts)) WITHOUT ROWID"
        )
    store = SQLiteStore(path)
    await store.open()
    await store.write([BatteryTelemetry(device_id="b", timestamp=T0, soc_percent=1)])
    await store.close()
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(telemetry)")}
    assert {"soc_percent", "power_factor", "connector_status"} <= columns


async def test_health_reports_backlog(store: SQLiteStore) -> None:
    """health() is reachable and counts devices."""
    await store.write([DERTelemetry(device_id="a", timestamp=T0)])
    health = await store.health()
    assert health.reachable
    assert health.backend == "sqlite"
    assert health.extra["devices"] == 1


async def test_last_is_the_latest_non_null_value_of_each_field(store: SQLiteStore) -> None:
    """A field reported less often than others still has a bucket 'last' (sparse counters)."""
    readings = [
        MeterTelemetry(device_id="m", timestamp=T0 + timedelta(seconds=s), power_kw=float(s))
        for s in range(0, 7200, 10)
    ]
    readings += [
        MeterTelemetry(
            device_id="m",
            timestamp=T0 + timedelta(minutes=m, seconds=5),
            energy_import_kwh=100.0 + m,
        )
        for m in range(0, 120, 15)
    ]
    await store.write(readings)
    for every in (Interval.QUARTER_HOUR, Interval.HOUR, Interval.DAY):
        page = await store.query(
            q("m", every=every, agg=Aggregation.LAST, fields=("power_kw", "energy_import_kwh"))
        )
        rows = orjson.loads(page.records_json)
        last = rows[-1]
        assert last["power_kw"] == 7190.0
        assert last["energy_import_kwh"] == 205.0
