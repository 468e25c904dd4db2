"""Anomaly detection: each rule on small synthetic series, the real Greensboro PV year with
injected faults, input validation, and the evaluation of detections against injected faults."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from derim.errors import TwinError
from derim.twin.anomaly import Anomaly, AnomalyConfig, detect
from derim.twin.datasets import PV_CAPACITY_W, Dataset, greensboro_pv
from derim.twin.faults import InjectedFault, evaluate, inject_faults
from derim.twin.features import Site, clearsky_ghi

HOUR = pd.Timedelta(hours=1)
SITE = Site(36.1, -79.95, 273.0)
"""Greensboro, NC: solar noon is about 17:20 UTC."""
CAPACITY = 5_000.0
SEED = 11
FLAT = AnomalyConfig(array_tilt_deg=0.0)
"""The synthetic PV below is a horizontal array."""


def clear_pv(days: int, start: str = "2021-04-01") -> pd.Series:
    """Hourly clear-sky output (W, about 4 kW at noon) of a horizontal array at ``SITE``."""
    index = pd.date_range(start, periods=days * 24, freq=HOUR, tz="UTC")
    return 4.0 * clearsky_ghi(index, SITE, HOUR).rename("ac_power_w")


def noisy_load(hours: int, seed: int = 0) -> pd.Series:
    """An hourly load (W) around 1 kW with 50 W of noise."""
    index = pd.date_range("2021-01-04", periods=hours, freq=HOUR, tz="UTC")
    rng = np.random.default_rng(seed)
    return pd.Series(1_000.0 + rng.normal(0.0, 50.0, hours), index=index)


def kinds(anomalies: list[Anomaly]) -> list[str]:
    return [anomaly.kind for anomaly in anomalies]


def at(text: str) -> datetime:
    moment: datetime = pd.Timestamp(text, tz="UTC").to_pydatetime()
    return moment


@pytest.fixture(scope="module")
def greensboro() -> Dataset:
    """A year of hourly AC power of a 5 kW system in Greensboro, loaded once."""
    data = greensboro_pv()
    assert data.site == SITE
    return data


def test_clear_days_with_night_zeros_raise_nothing() -> None:
    """Night-time zeros (and smooth clear days) of a PV series are not anomalies."""
    series = clear_pv(40)
    assert (series == 0).sum() > 40 * 8
    assert detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT) == []


def test_daylight_outage_is_one_event_with_its_numbers() -> None:
    """Five hours of zero output around noon are one outage spanning exactly those hours."""
    series = clear_pv(5)
    series["2021-04-03 15:00":"2021-04-03 19:00"] = 0.0
    found = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["outage"]
    outage = found[0]
    assert (outage.start, outage.end) == (at("2021-04-03 15:00"), at("2021-04-03 20:00"))
    assert outage.severity == "high"
    assert "output 0 W" in outage.reason
    assert "for 5.0 h" in outage.reason
    assert "W/m²" in outage.reason


def test_short_dip_is_not_an_outage() -> None:
    """One hour of zero output is shorter than the outage minimum of two hours."""
    series = clear_pv(5)
    series["2021-04-03 17:00"] = 0.0
    assert "outage" not in kinds(
        detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    )


def test_outage_needs_a_site() -> None:
    """Without a site there is no daylight, so zeros are not an outage."""
    series = clear_pv(5)
    series["2021-04-03 15:00":"2021-04-03 19:00"] = 0.0
    assert "outage" not in kinds(detect(series, freq=HOUR, capacity=CAPACITY))


def test_frozen_daylight_reading_is_stuck() -> None:
    """A reading repeated for four daylight hours is a stuck meter."""
    series = clear_pv(5)
    frozen = series["2021-04-03 14:00"]
    series["2021-04-03 14:00":"2021-04-03 17:00"] = frozen
    found = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["stuck"]
    assert (found[0].start, found[0].end) == (at("2021-04-03 14:00"), at("2021-04-03 18:00"))
    assert f"{frozen:.1f} W for 4 readings" in found[0].reason


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_an_index_in_coarser_units_than_ns_gives_the_same_anomalies(unit: str) -> None:
    """pandas 3 keeps timestamps in s, ms or µs when built from them (SQLite rows give µs):
    the same stuck PV reading is found, at the same times, as with a nanosecond index."""
    series = clear_pv(5)
    series["2021-04-03 14:00":"2021-04-03 17:00"] = series["2021-04-03 14:00"]
    coarse = series.set_axis(series.index.as_unit(unit))
    expected = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    found = detect(coarse, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["stuck"]
    assert found == expected


def test_repeated_clipping_level_is_not_stuck() -> None:
    """Clipping at the same level every day is a limit, not a frozen meter."""
    series = clear_pv(5).clip(upper=3_000.0)
    assert (series == 3_000.0).sum() >= 5 * 3
    assert detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT) == []


def test_load_frozen_at_night_is_stuck() -> None:
    """A load (no site) should vary at any time, so a frozen night reading is stuck."""
    series = noisy_load(72)
    series.iloc[2:6] = 1_234.5
    found = detect(series, freq=HOUR, capacity=CAPACITY)
    assert kinds(found) == ["stuck"]
    assert found[0].start == series.index[2]


def test_idle_zero_load_is_not_stuck() -> None:
    """Ten hours at exactly 0 W are an idle device, not a frozen meter."""
    series = noisy_load(72)
    series.iloc[20:30] = 0.0
    assert "stuck" not in kinds(detect(series, freq=HOUR, capacity=CAPACITY))


def test_missing_readings_are_a_gap_and_one_missing_is_not() -> None:
    """Three missing readings in a row are a gap; a single missing reading is tolerated."""
    series = noisy_load(72)
    series.iloc[10:13] = np.nan
    series.iloc[40] = np.nan
    found = detect(series, freq=HOUR, capacity=CAPACITY)
    assert kinds(found) == ["gap"]
    assert (found[0].start, found[0].end) == (series.index[10], series.index[13])
    assert "3.0 h" in found[0].reason


def test_readings_beyond_the_rating_are_out_of_range() -> None:
    """Above 1.1 x rating and below -5 % of it are out of range; 1.08 x rating is not."""
    series = noisy_load(72)
    series.iloc[5:10] += 1.08 * CAPACITY - 1_000.0
    series.iloc[20:22] = 6_000.0
    series.iloc[50] = -400.0
    found = detect(series, freq=HOUR, capacity=CAPACITY)
    assert kinds(found) == ["out_of_range", "out_of_range"]
    assert (found[0].start, found[0].end) == (series.index[20], series.index[22])
    assert "above the limit of 5500 W" in found[0].reason
    assert "below the limit of -250 W" in found[1].reason


def test_explicit_limits_override_the_rating() -> None:
    """``max_value`` replaces the rating-based upper limit."""
    series = noisy_load(72)
    series.iloc[30] = 1_500.0
    config = AnomalyConfig(max_value=1_400.0)
    found = detect(series, freq=HOUR, capacity=CAPACITY, config=config)
    assert kinds(found) == ["out_of_range"]
    assert found[0].start == series.index[30]


def test_single_step_jump_is_a_spike() -> None:
    """A one-reading jump of 1.5 kW on a 50 W-noise load is a spike; the noise is not."""
    series = noisy_load(24 * 14)
    series.iloc[100] += 1_500.0
    found = detect(series, freq=HOUR, capacity=CAPACITY)
    assert kinds(found) == ["spike"]
    assert (found[0].start, found[0].end) == (series.index[100], series.index[101])
    assert "robust z-score" in found[0].reason


def test_solar_reading_above_the_clear_sky_ceiling_is_a_spike() -> None:
    """A PV reading far above what a clear sky allows at that hour is a spike."""
    series = clear_pv(30)
    moment = "2021-04-20 14:00"
    series[moment] += 0.3 * CAPACITY
    found = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["spike"]
    assert found[0].start == at(moment)
    assert "clear-sky ceiling" in found[0].reason


def test_sustained_excess_over_the_ceiling_is_out_of_range() -> None:
    """Hours of PV output well above the clear-sky envelope are out of range, not spikes."""
    series = clear_pv(30)
    series["2021-04-20 14:00":"2021-04-20 17:00"] += 0.3 * CAPACITY
    found = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["out_of_range"]
    assert "clear-sky ceiling" in found[0].reason


def test_soiling_ramp_is_drift() -> None:
    """Output losing up to 25 % over three weeks, then washed, is one drift event inside it."""
    series = clear_pv(120)
    soiled = slice("2021-05-20", "2021-06-09 23:00")
    ramp = np.linspace(0.0, 0.25, len(series[soiled]))
    series[soiled] = series[soiled] * (1.0 - ramp)
    found = detect(series, freq=HOUR, site=SITE, capacity=CAPACITY, config=FLAT)
    assert kinds(found) == ["drift"]
    assert at("2021-05-25") < found[0].start < found[0].end < at("2021-06-10 12:00")
    assert "below 90%" in found[0].reason


def test_drift_without_site_compares_energy_with_the_forecast() -> None:
    """Without a site, ten days at 80 % of the P50 energy are drift."""
    series = noisy_load(24 * 30)
    expected = pd.DataFrame({"p10": 900.0, "p50": 1_000.0, "p90": 1_100.0}, index=series.index)
    series.iloc[24 * 10 : 24 * 20] *= 0.8
    found = detect(series, freq=HOUR, expected=expected, capacity=CAPACITY)
    assert kinds(found) == ["drift"]
    assert (found[0].start, found[0].end) == (series.index[240], series.index[480])
    assert "energy / P50 energy" in found[0].reason


def test_long_excursion_outside_the_band_is_a_residual() -> None:
    """Three hours far above P90 are a residual anomaly; one hour outside is too short."""
    series = noisy_load(72)
    expected = pd.DataFrame({"p10": 900.0, "p50": 1_000.0, "p90": 1_100.0}, index=series.index)
    series.iloc[10] = 1_400.0
    series.iloc[30:33] += 800.0
    found = detect(series, freq=HOUR, expected=expected, capacity=CAPACITY)
    assert kinds(found) == ["residual"]
    assert (found[0].start, found[0].end) == (series.index[30], series.index[33])
    assert "above P90" in found[0].reason


def test_rules_take_precedence_over_residuals() -> None:
    """An outage below the band is reported as an outage, not also as a residual."""
    series = clear_pv(5)
    expected = pd.DataFrame(
        {"p10": 0.9 * series, "p50": series, "p90": 1.1 * series}, index=series.index
    )
    series["2021-04-03 15:00":"2021-04-03 19:00"] = 0.0
    found = detect(series, freq=HOUR, expected=expected, site=SITE, capacity=CAPACITY)
    assert kinds(found) == ["outage"]


def test_greensboro_daylight_outage_is_flagged(greensboro: Dataset) -> None:
    """Five hours of zero output on a real June day are flagged as an outage."""
    series = greensboro.series.copy()
    series["2021-06-15 15:00":"2021-06-15 19:00"] = 0.0
    found = detect(series, freq=greensboro.freq, site=SITE, capacity=PV_CAPACITY_W)
    outages = [a for a in found if a.kind == "outage"]
    assert len(outages) == 1
    assert (outages[0].start, outages[0].end) == (at("2021-06-15 15:00"), at("2021-06-15 20:00"))


def test_clean_greensboro_year_raises_at_most_one_false_alarm(greensboro: Dataset) -> None:
    """The unaltered year, clouds and all, gives at most one alarm: a hazy week read as drift."""
    series = greensboro.series
    assert (series == 0).mean() > 0.4
    found = detect(series, freq=greensboro.freq, site=SITE, capacity=PV_CAPACITY_W)
    assert len(found) <= 1
    assert set(kinds(found)) <= {"drift"}


def test_injected_faults_are_found_with_high_precision_and_recall(greensboro: Dataset) -> None:
    """Outages, soiling, stuck readings, spikes and gaps planted in the real year are found:
    event precision and recall at least 0.8, every outage and gap."""
    faulty, injected = inject_faults(
        greensboro.series, freq=greensboro.freq, site=SITE, seed=SEED,
        capacity=PV_CAPACITY_W,
    )  # fmt: skip
    found = detect(faulty, freq=greensboro.freq, site=SITE, capacity=PV_CAPACITY_W)
    result = evaluate(found, injected)
    assert result.recall.total == 20
    assert result.precision.ratio >= 0.8
    assert result.recall.ratio >= 0.8
    assert result.recall_by_kind["outage"].ratio == 1.0
    assert result.recall_by_kind["gap"].ratio == 1.0


def test_a_year_of_hourly_data_takes_well_under_a_second(greensboro: Dataset) -> None:
    """Detection over 8,760 hourly readings is vectorised: far below one second."""
    began = time.perf_counter()
    detect(greensboro.series, freq=greensboro.freq, site=SITE, capacity=PV_CAPACITY_W)
    assert time.perf_counter() - began < 1.0


def test_injection_is_reproducible_and_faults_do_not_overlap(greensboro: Dataset) -> None:
    """The same seed plants the same faults, each kind four times, none overlapping."""
    first = inject_faults(greensboro.series, freq=HOUR, site=SITE, seed=3)
    second = inject_faults(greensboro.series, freq=HOUR, site=SITE, seed=3)
    assert first[1] == second[1]
    pd.testing.assert_series_equal(first[0], second[0])
    faults = first[1]
    assert sorted(f.kind for f in faults) == sorted(
        ["drift", "outage", "stuck", "spike", "gap"] * 4
    )
    for earlier, later in itertools.pairwise(faults):
        assert earlier.end <= later.start
    gaps = [f for f in faults if f.kind == "gap"]
    assert all(first[0][g.start : g.end - timedelta(hours=1)].isna().all() for g in gaps)


def test_evaluation_counts_overlapping_events() -> None:
    """Precision counts detections overlapping a fault; recall counts faults overlapped."""
    base = datetime(2021, 1, 1, tzinfo=UTC)

    def span(hours: int, length: int = 2) -> tuple[datetime, datetime]:
        return base + timedelta(hours=hours), base + timedelta(hours=hours + length)

    injected = [InjectedFault("outage", *span(10), ""), InjectedFault("spike", *span(30), "")]
    detected = [
        Anomaly(kind="outage", field="p", start=span(11)[0], end=span(11)[1], severity="high",
                reason="r"),
        Anomaly(kind="spike", field="p", start=span(50)[0], end=span(50)[1], severity="low",
                reason="r"),
        Anomaly(kind="gap", field="p", start=span(12)[1], end=span(20)[1], severity="low",
                reason="r"),
    ]  # fmt: skip
    result = evaluate(detected, injected)
    assert (result.precision.hits, result.precision.total) == (1, 3)
    assert (result.recall.hits, result.recall.total) == (1, 2)
    assert result.recall_by_kind["spike"].ratio == 0.0
    assert result.precision_by_kind["outage"].ratio == 1.0
    assert [a.kind for a in result.false_alarms] == ["spike", "gap"]
    assert [f.kind for f in result.missed] == ["spike"]
    assert "| overall | 0.33 (1/3) | 0.50 (1/2) |" in result.table()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.reset_index(drop=True), "datetime index"),
        (lambda s: s.drop(s.index[5]), "not regular"),
        (lambda s: s.replace(s.iloc[3], np.inf), "infinite"),
        (lambda s: s.astype(object).where(s.index != s.index[2], "n/a"), "not numbers"),
    ],
)
def test_bad_series_is_a_twin_error(change: Callable[[pd.Series], pd.Series], message: str) -> None:
    """A non-datetime or irregular index, or non-finite or non-numeric readings, are refused."""
    with pytest.raises(TwinError, match=message):
        detect(change(noisy_load(24)), freq=HOUR)


def test_bad_capacity_step_or_forecast_is_a_twin_error() -> None:
    """A negative capacity, a step not dividing a day, or a forecast lacking P90 are refused."""
    series = noisy_load(24)
    with pytest.raises(TwinError, match="capacity must be a positive"):
        detect(series, freq=HOUR, capacity=-5.0)
    with pytest.raises(TwinError, match="divide a day"):
        detect(series, freq=pd.Timedelta(minutes=7))
    with pytest.raises(TwinError, match=r"lacks columns \['p90'\]"):
        detect(series, freq=HOUR, expected=pd.DataFrame({"p10": series, "p50": series}))


def test_config_refuses_out_of_range_thresholds() -> None:
    """Thresholds outside their ranges, an even window or crossed limits are refused."""
    with pytest.raises(ValidationError, match="outage_fraction"):
        AnomalyConfig(outage_fraction=1.5)
    with pytest.raises(ValidationError, match="odd"):
        AnomalyConfig(spike_window=4)
    with pytest.raises(ValidationError, match="below max_value"):
        AnomalyConfig(min_value=10.0, max_value=5.0)
    with pytest.raises(ValidationError, match="extra"):
        AnomalyConfig(outage_hours=3)  # type: ignore[call-arg]


def test_anomaly_end_must_follow_start() -> None:
    """An anomaly ending before it starts is invalid."""
    start = datetime(2021, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="not after start"):
        Anomaly(kind="gap", field="p", start=start, end=start, severity="low", reason="r")
