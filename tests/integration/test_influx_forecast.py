"""Forecasts in InfluxStore against a real influxd: measurement ``forecast`` (tags device_id and
model, float fields p10/p50/p90 at the target times) and the device's latest issue."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from influxd import InfluxServer

from derim.errors import StorageError
from derim.storage.base import StoredForecastPoint
from derim.storage.influx import InfluxStore

pytestmark = pytest.mark.integration

ISSUED = datetime(2024, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
STEP = timedelta(minutes=15)


def steps(count: int, level: float, start: datetime = ISSUED) -> list[StoredForecastPoint]:
    """``count`` 15-min steps from ``start`` with P10 < P50 < P90 around ``level`` kW."""
    return [
        StoredForecastPoint(start + k * STEP, level - 1 + k / 8, level + k / 8, level + 1 + k / 8)
        for k in range(count)
    ]


async def influxql(server: InfluxServer, statement: str, database: str) -> Any:
    """Run InfluxQL directly (outside the store); the first result."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/query", data={"q": statement, "db": database, "epoch": "ms"})
    response.raise_for_status()
    return response.json()["results"][0]


@pytest.fixture
async def store(influxd: InfluxServer) -> AsyncIterator[InfluxStore]:
    """An opened store on a fresh database, dropped afterwards."""
    store = InfluxStore(influxd.url, f"test_{uuid.uuid4().hex[:12]}", timeout_s=5.0)
    await store.open()
    yield store
    await store.close()
    await influxql(influxd, f'DROP DATABASE "{store.database}"', "")


async def test_forecast_round_trips_as_tagged_float_points(
    store: InfluxStore, influxd: InfluxServer
) -> None:
    """The latest issue comes back with its model, issue instant (ms) and steps; InfluxDB holds
    one ``forecast`` point per step at its target time, tagged device_id and model."""
    points = steps(96, 3.0)
    await store.write_forecast("pv-1", "gbm", ISSUED, points)
    found = await store.latest_forecast("pv-1")
    assert found is not None
    assert (found.device_id, found.model, found.issued_at) == ("pv-1", "gbm", ISSUED)
    assert list(found.points) == points
    assert await store.latest_forecast("pv-2") is None
    fields = await influxql(influxd, 'SHOW FIELD KEYS FROM "forecast"', store.database)
    types = dict(fields["series"][0]["values"])
    assert {name: types[name] for name in ("p10", "p50", "p90")} == dict.fromkeys(
        ("p10", "p50", "p90"), "float"
    )
    stored = await influxql(
        influxd,
        'SELECT "p50" FROM "forecast" WHERE "device_id" = \'pv-1\' AND "model" = \'gbm\'',
        store.database,
    )
    times = [row[0] for row in stored["series"][0]["values"]]
    assert times == [int(p.time.timestamp() * 1000) for p in points]


async def test_a_later_issue_is_the_latest_and_overwrites_shared_steps(
    store: InfluxStore, influxd: InfluxServer
) -> None:
    """A later, shorter issue of the same model is the latest with only its own steps; in the
    measurement it overwrites the steps it shares and leaves the earlier ones (chart history)."""
    await store.write_forecast("pv-1", "gbm", ISSUED, steps(8, 3.0))
    later = ISSUED + 2 * STEP
    await store.write_forecast("pv-1", "gbm", later, steps(2, 5.0, later))
    found = await store.latest_forecast("pv-1")
    assert found is not None
    assert (found.issued_at, list(found.points)) == (later, steps(2, 5.0, later))
    stored = await influxql(
        influxd, 'SELECT "p50" FROM "forecast" WHERE "device_id" = \'pv-1\'', store.database
    )
    values = [row[1] for row in stored["series"][0]["values"]]
    assert values == [p.p50 for p in steps(2, 3.0)] + [p.p50 for p in steps(2, 5.0, later)] + [
        p.p50 for p in steps(8, 3.0)[4:]
    ]


async def test_tags_are_escaped_and_unrepresentable_ones_refused(store: InfluxStore) -> None:
    """Device ids and models with spaces, commas and equals signs round-trip; a backslash in a
    tag value is a StorageError."""
    await store.write_forecast("pv 1,a=b", "my model", ISSUED, steps(3, 1.0))
    found = await store.latest_forecast("pv 1,a=b")
    assert found is not None
    assert (found.model, list(found.points)) == ("my model", steps(3, 1.0))
    with pytest.raises(StorageError, match="cannot be stored"):
        await store.write_forecast("pv-1", "bad\\model", ISSUED, steps(3, 1.0))


async def test_non_finite_values_are_refused_and_delete_drops_the_forecast(
    store: InfluxStore,
) -> None:
    """A NaN step is a StorageError that stores nothing; deleting the device drops its forecast."""
    broken = [*steps(2, 1.0), StoredForecastPoint(ISSUED + 2 * STEP, 0.0, math.nan, 1.0)]
    with pytest.raises(StorageError, match="finite"):
        await store.write_forecast("pv-1", "gbm", ISSUED, broken)
    assert await store.latest_forecast("pv-1") is None
    await store.write_forecast("pv-1", "gbm", ISSUED, steps(2, 1.0))
    await store.write_forecast("pv-2", "gbm", ISSUED, steps(2, 1.0))
    await store.delete_device("pv-1")
    assert await store.latest_forecast("pv-1") is None
    assert await store.latest_forecast("pv-2") is not None
