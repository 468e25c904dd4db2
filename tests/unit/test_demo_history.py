"""The demo's history carries its stuck household meter inside the two days the demo and the
dashboard look at, whatever the time of day the demo starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import groupby

import pytest

from derim.demo import sample_history


@pytest.mark.parametrize("hour", [0, 9, 11, 15, 23])
def test_the_household_meter_is_stuck_four_hours_within_the_last_two_days(hour: int) -> None:
    """One run of 16 equal load-house readings (4 h at 15 min), between two days and one day
    before the end; every other run is short."""
    end = datetime(2026, 11, 27, hour, 40, tzinfo=UTC)
    house = [r for r in sample_history(end, days=3) if r.device_id == "load-house"]
    runs = sorted((list(run) for _, run in groupby(house, key=lambda r: r.power_kw)), key=len)
    stuck = runs[-1]
    assert len(stuck) == 16
    assert len(runs[-2]) < 4
    assert end - timedelta(days=2) <= stuck[0].timestamp
    assert stuck[-1].timestamp < end - timedelta(days=1)
