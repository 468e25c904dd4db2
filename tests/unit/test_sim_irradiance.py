"""The TMY-driven PV output: night, noon, seasons, yearly yield, interpolation, year mapping."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from derim.sim.irradiance import PvYear

EST = timezone(timedelta(hours=-5))
"""Greensboro's standard time, the TMY file's clock."""
STEP = timedelta(minutes=10)


@pytest.fixture(scope="module")
def pv() -> PvYear:
    """The model, loaded once for the module."""
    return PvYear()


@pytest.fixture(scope="module")
def year_utc(pv: PvYear) -> list[tuple[datetime, float]]:
    """Every 10 minutes of 2023 (UTC) with its output fraction."""
    start = datetime(2023, 1, 1, tzinfo=UTC)
    moments = [start + i * STEP for i in range(int(timedelta(days=365) / STEP))]
    return [(m, pv.fraction_at(m)) for m in moments]


def _noon(month: int, day: int) -> datetime:
    """Greensboro's solar noon, about 12:20 standard time."""
    return datetime(2001, month, day, 12, 20, tzinfo=EST)


def test_location_is_the_bundled_station(pv: PvYear) -> None:
    """The weather is pvlib's Greensboro TMY3 file."""
    assert pv.location == "GREENSBORO PIEDMONT TRIAD INT, NC"


def test_zero_at_local_midnight_all_year(pv: PvYear) -> None:
    """Every night of the year, local midnight and 02:00 give no output."""
    for day in range(365):
        midnight = datetime(2001, 1, 1, tzinfo=EST) + timedelta(days=day)
        assert pv.fraction_at(midnight) == 0.0
        assert pv.fraction_at(midnight + timedelta(hours=2)) == 0.0


def test_clear_summer_noon_is_near_nameplate(pv: PvYear) -> None:
    """June 30 is clear in the data: solar noon is well above half the nameplate."""
    assert pv.fraction_at(_noon(6, 30)) > 0.75


def test_winter_noons_are_weaker_than_summer_noons(pv: PvYear) -> None:
    """Averaged over the month, January's solar noons give less than June's."""
    january = [pv.fraction_at(_noon(1, d)) for d in range(1, 31)]
    june = [pv.fraction_at(_noon(6, d)) for d in range(1, 31)]
    assert sum(january) / len(january) < sum(june) / len(june) - 0.05


def test_values_stay_within_zero_and_nameplate(year_utc: list[tuple[datetime, float]]) -> None:
    """No moment of the year gives a negative output or one above the nameplate."""
    values = [f for _, f in year_utc]
    assert min(values) == 0.0
    assert max(values) <= 1.0


def test_annual_capacity_factor_is_plausible_for_north_carolina(
    year_utc: list[tuple[datetime, float]],
) -> None:
    """A fixed south-facing array in NC yields an AC capacity factor of about 14-22 %."""
    capacity_factor = sum(f for _, f in year_utc) / len(year_utc)
    assert 0.14 < capacity_factor < 0.22


def test_output_is_centred_on_solar_noon(year_utc: list[tuple[datetime, float]]) -> None:
    """The year's output centres near 17:20 UTC (12:20 EST), so the time zone is right."""
    total = sum(f for _, f in year_utc)
    centre = sum((m.hour + m.minute / 60) * f for m, f in year_utc) / total
    assert 17.0 < centre < 17.7


def test_values_between_samples_are_linear(pv: PvYear) -> None:
    """At hh:00 the value is the mean of the hourly samples at (hh-1):30 and hh:30."""
    for hour in range(6, 20):
        on_hour = datetime(2001, 6, 30, hour, tzinfo=EST)
        before = pv.fraction_at(on_hour - timedelta(minutes=30))
        after = pv.fraction_at(on_hour + timedelta(minutes=30))
        value = pv.fraction_at(on_hour)
        assert min(before, after) <= value <= max(before, after)
        assert value == pytest.approx((before + after) / 2)


def test_output_has_no_jumps_minute_to_minute(pv: PvYear) -> None:
    """Over a whole day, one minute never changes the output by more than 1 % of nameplate."""
    start = datetime(2001, 6, 30, tzinfo=EST)
    values = [pv.fraction_at(start + timedelta(minutes=i)) for i in range(24 * 60 + 1)]
    assert max(abs(b - a) for a, b in itertools.pairwise(values)) < 0.01


@pytest.mark.parametrize("year", [1999, 2024, 2031])
def test_other_years_map_to_the_tmy_day(pv: PvYear, year: int) -> None:
    """A date in any year (leap or not) gives the TMY values of the same month, day and time."""
    for minutes in range(0, 24 * 60, 7):
        offset = timedelta(minutes=minutes)
        tmy = pv.fraction_at(datetime(2001, 6, 30, tzinfo=EST) + offset)
        assert pv.fraction_at(datetime(year, 6, 30, tzinfo=EST) + offset) == tmy


def test_february_29_is_february_28(pv: PvYear) -> None:
    """A leap day repeats Feb 28 of the TMY year."""
    for hour in range(24):
        leap_day = pv.fraction_at(datetime(2024, 2, 29, hour, 40, tzinfo=EST))
        assert leap_day == pv.fraction_at(datetime(2001, 2, 28, hour, 40, tzinfo=EST))


def test_any_time_zone_names_the_same_instant(pv: PvYear) -> None:
    """The same instant given in UTC, EST or CEST gives the same output."""
    instant = datetime(2023, 8, 14, 15, 45, tzinfo=UTC)
    cest = instant.astimezone(timezone(timedelta(hours=2)))
    assert pv.fraction_at(instant) == pv.fraction_at(instant.astimezone(EST))
    assert pv.fraction_at(instant) == pv.fraction_at(cest)
    assert pv.fraction_at(instant) > 0


def test_naive_moment_is_refused(pv: PvYear) -> None:
    """A datetime without a time zone is ambiguous and raises ValueError."""
    with pytest.raises(ValueError, match="timezone-aware"):
        pv.fraction_at(datetime(2023, 6, 30, 12))
