"""The anomaly store: round trips, idempotent upserts, window overlap, persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from derim.errors import StorageError
from derim.storage.anomalies import FILE_NAME, AnomalyStore
from derim.twin.anomaly import Anomaly

T0 = datetime(2021, 6, 15, 15, tzinfo=UTC)
HOUR = timedelta(hours=1)


def anomaly(start_h: int, hours: int = 2, kind: str = "outage", **changes: str) -> Anomaly:
    """An anomaly starting ``start_h`` hours after T0, ``hours`` long."""
    fields: dict[str, object] = {
        "kind": kind,
        "field": "ac_power_w",
        "start": T0 + start_h * HOUR,
        "end": T0 + (start_h + hours) * HOUR,
        "severity": "high",
        "reason": "output 0 W for 2.0 h while clear-sky irradiance averaged 640 W/m²",
    }
    return Anomaly.model_validate({**fields, **changes})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AnomalyStore]:
    s = AnomalyStore(tmp_path / FILE_NAME)
    await s.open()
    yield s
    s.close()


async def test_round_trip_returns_equal_anomalies(store: AnomalyStore) -> None:
    """What is added comes back equal (times in UTC), oldest first."""
    later, earlier = anomaly(5, kind="spike"), anomaly(0)
    await store.add("pv-1", [later, earlier])
    assert await store.between("pv-1", T0 - HOUR, T0 + 24 * HOUR) == [earlier, later]


async def test_adding_the_same_event_again_updates_it(store: AnomalyStore) -> None:
    """Same device, field, kind and start: one row, with the newer end, severity and reason."""
    await store.add("pv-1", [anomaly(0)])
    grown = anomaly(0, hours=5, severity="medium", reason="output 0 W for 5.0 h")
    await store.add("pv-1", [grown])
    assert await store.between("pv-1", T0, T0 + 24 * HOUR) == [grown]


async def test_same_start_of_another_kind_or_field_is_another_event(store: AnomalyStore) -> None:
    """The key includes kind and field, so these are separate events."""
    events = [anomaly(0), anomaly(0, kind="stuck"), anomaly(0, field="dc_power_w")]
    await store.add("pv-1", events)
    assert len(await store.between("pv-1", T0, T0 + HOUR)) == 3


async def test_between_returns_events_overlapping_the_window(store: AnomalyStore) -> None:
    """Events overlapping [start, end) are returned; touching its edges or another device's
    events are not."""
    before, straddles_start, inside, straddles_end, after = (
        anomaly(0, 2), anomaly(3, 3), anomaly(7, 1), anomaly(9, 4), anomaly(10, 2)
    )  # fmt: skip
    await store.add("pv-1", [before, straddles_start, inside, straddles_end, after])
    await store.add("pv-2", [anomaly(6, 1)])
    window = await store.between("pv-1", T0 + 2 * HOUR, T0 + 10 * HOUR)
    assert window == [straddles_start, inside, straddles_end]


async def test_anomalies_survive_a_restart(tmp_path: Path) -> None:
    """A reopened file holds what was added before."""
    first = AnomalyStore(tmp_path / FILE_NAME)
    await first.open()
    await first.add("pv-1", [anomaly(0)])
    first.close()
    second = AnomalyStore(tmp_path / FILE_NAME)
    await second.open()
    try:
        assert await second.between("pv-1", T0, T0 + HOUR) == [anomaly(0)]
    finally:
        second.close()


async def test_naive_window_and_closed_store_are_storage_errors(store: AnomalyStore) -> None:
    """A window without a timezone, or a closed file, raise StorageError naming the problem."""
    with pytest.raises(StorageError, match="no timezone"):
        await store.between("pv-1", datetime(2021, 6, 15), T0)
    store.close()
    with pytest.raises(StorageError, match="not open"):
        await store.add("pv-1", [anomaly(0)])
