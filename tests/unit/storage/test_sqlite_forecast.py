"""Forecasts in the SQLite backend: the latest issue per device, replaced whole, kept on disk."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from derim.errors import StorageError
from derim.storage.base import StoredForecastPoint
from derim.storage.sqlite import SQLiteStore

ISSUED = datetime(2024, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
STEP = timedelta(minutes=15)


def steps(count: int, level: float, start: datetime = ISSUED) -> list[StoredForecastPoint]:
    """``count`` 15-min steps from ``start`` with P10 < P50 < P90 around ``level`` kW."""
    return [
        StoredForecastPoint(start + k * STEP, level - 1 + k / 8, level + k / 8, level + 1 + k / 8)
        for k in range(count)
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An opened store in a fresh file."""
    opened = SQLiteStore(tmp_path / "t.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_latest_forecast_round_trips_in_time_order(store: SQLiteStore) -> None:
    """The stored issue comes back with its model, issue instant (ms) and steps in time order."""
    points = steps(96, 3.0)
    await store.write_forecast("pv-1", "gbm", ISSUED, list(reversed(points)))
    found = await store.latest_forecast("pv-1")
    assert found is not None
    assert (found.device_id, found.model, found.issued_at) == ("pv-1", "gbm", ISSUED)
    assert list(found.points) == points
    assert await store.latest_forecast("pv-2") is None


async def test_a_new_issue_replaces_the_whole_previous_one(store: SQLiteStore) -> None:
    """A later, shorter issue by another model leaves none of the earlier steps behind, and
    other devices' forecasts are untouched."""
    await store.write_forecast("pv-1", "gbm", ISSUED, steps(96, 3.0))
    await store.write_forecast("pv-2", "gbm", ISSUED, steps(4, 1.0))
    later = ISSUED + STEP
    await store.write_forecast("pv-1", "seasonal_daily", later, steps(8, 5.0, later))
    found = await store.latest_forecast("pv-1")
    assert found is not None
    assert (found.model, found.issued_at, list(found.points)) == (
        "seasonal_daily",
        later,
        steps(8, 5.0, later),
    )
    other = await store.latest_forecast("pv-2")
    assert other is not None
    assert list(other.points) == steps(4, 1.0)


async def test_forecast_survives_reopening_and_goes_with_the_device(tmp_path: Path) -> None:
    """The forecast is on disk after a restart; deleting the device deletes it."""
    first = SQLiteStore(tmp_path / "t.db")
    await first.open()
    await first.write_forecast("pv-1", "gbm", ISSUED, steps(4, 2.0))
    await first.close()
    second = SQLiteStore(tmp_path / "t.db")
    await second.open()
    try:
        found = await second.latest_forecast("pv-1")
        assert found is not None
        assert list(found.points) == steps(4, 2.0)
        await second.delete_device("pv-1")
        assert await second.latest_forecast("pv-1") is None
    finally:
        await second.close()


async def test_non_finite_values_are_refused_and_empty_issues_ignored(store: SQLiteStore) -> None:
    """A NaN or infinite value is a StorageError that keeps the previous issue; an issue with
    no steps changes nothing."""
    await store.write_forecast("pv-1", "gbm", ISSUED, steps(4, 2.0))
    for bad in (math.nan, math.inf):
        broken = [*steps(3, 2.0), StoredForecastPoint(ISSUED + 3 * STEP, 1.0, bad, 3.0)]
        with pytest.raises(StorageError, match="finite"):
            await store.write_forecast("pv-1", "gbm", ISSUED + STEP, broken)
    await store.write_forecast("pv-1", "other", ISSUED + STEP, [])
    found = await store.latest_forecast("pv-1")
    assert found is not None
    assert (found.model, list(found.points)) == ("gbm", steps(4, 2.0))
