"""The demo's data carries its stuck household meter inside the last day, which the demo's
anomaly scan and the dashboard's chart look at, whatever the time of day the demo starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import groupby

import pytest

from derim.demo import sample_day, sample_history


@pytest.mark.parametrize("hour", [0, 9, 11, 15, 23])
def test_the_household_meter_is_stuck_four_hours_within_the_last_day(hour: int) -> None:
    """One run of 240 equal one-minute load-house readings (4 h) ending at least 6 h before
    the end; every other run, in the day and in the 15-min history before it, is short."""
    end = datetime(2026, 11, 27, hour, 40, 30, tzinfo=UTC)
    readings = sample_history(end, days=3) + sample_day(end)
    house = [r for r in readings if r.device_id == "load-house"]
    runs = sorted((list(run) for _, run in groupby(house, key=lambda r: r.power_kw)), key=len)
    stuck = runs[-1]
    assert len(stuck) == 240
    assert len(runs[-2]) < 4
    assert end - timedelta(days=1) <= stuck[0].timestamp
    assert stuck[-1].timestamp < end - timedelta(hours=6)
