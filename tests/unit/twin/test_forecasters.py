"""Forecasters: the interface's shape, what each baseline computes, and that the learnt models
beat the baselines on real PV data (pvlib's Greensboro TMY3 year)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derim.errors import TwinError
from derim.twin.backtest import backtest
from derim.twin.baselines import (
    ClearSkyPersistence,
    Persistence,
    SeasonalMovingAverage,
    SeasonalNaive,
    SeasonalWeekly,
)
from derim.twin.catalogue import BASELINES, FORECASTERS, make_forecaster
from derim.twin.datasets import greensboro_pv
from derim.twin.features import Covariates, Site
from derim.twin.timeseries import regularise

HOUR = pd.Timedelta(hours=1)
SITE = Site(36.1, -79.95)


def hourly(values: np.ndarray, start: str = "2024-01-01") -> pd.Series:
    """``values`` on an hourly UTC index."""
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq="h", tz="UTC"))


def weekly_pattern(days: int = 60) -> pd.Series:
    """A series repeating every week, with a different level on each day of the week."""
    hours = np.arange(days * 24)
    return hourly(10 + 5 * np.sin(2 * np.pi * hours / 24) + (hours // 24) % 7)


@pytest.mark.parametrize("name", BASELINES)
def test_a_forecast_starts_after_the_history_and_orders_its_quantiles(name: str) -> None:
    """Every baseline forecasts ``horizon / freq`` steps from one step after the history ends,
    with P10 <= P50 <= P90."""
    series = weekly_pattern()
    model = make_forecaster(name).fit(series, Covariates(HOUR, SITE))
    forecast = model.predict(pd.Timedelta(hours=30))
    assert len(forecast.index) == 30
    assert forecast.index[0] == series.index[-1] + HOUR
    assert np.all(forecast.p10 <= forecast.p50)
    assert np.all(forecast.p50 <= forecast.p90)


def test_seasonal_baselines_repeat_yesterday_and_last_week() -> None:
    """Same-time-yesterday repeats the last day; same-time-last-week reproduces a weekly cycle."""
    series = weekly_pattern()
    covariates = Covariates(HOUR)
    daily = SeasonalNaive().fit(series, covariates).predict(pd.Timedelta(hours=48))
    assert np.allclose(daily.p50[:24], series.to_numpy()[-24:])
    assert np.allclose(daily.p50[24:], series.to_numpy()[-24:])
    future = weekly_pattern(74).to_numpy()[60 * 24 : 61 * 24]
    weekly = SeasonalWeekly().fit(series, covariates).predict(pd.Timedelta(hours=24))
    assert np.allclose(weekly.p50, future)


def test_persistence_holds_the_last_value_and_the_moving_average_averages_seven_days() -> None:
    """Persistence repeats the last finite value; the moving average is the 7-day mean per hour."""
    series = weekly_pattern()
    series.iloc[-1] = np.nan
    covariates = Covariates(HOUR)
    flat = Persistence().fit(series, covariates).predict(pd.Timedelta(hours=5))
    assert np.all(flat.p50 == series.iloc[-2])
    clean = weekly_pattern()
    average = SeasonalMovingAverage().fit(clean, covariates).predict(pd.Timedelta(hours=24))
    expected = clean.to_numpy()[-7 * 24 :].reshape(7, 24).mean(axis=0)
    assert np.allclose(average.p50, expected)


def test_clearsky_persistence_scales_the_clear_sky_by_the_last_days_index() -> None:
    """On a series that is 0.6 x clear sky, clear-sky persistence forecasts 0.6 x clear sky."""
    covariates = Covariates(HOUR, SITE)
    index = pd.date_range("2024-03-01", periods=60 * 24, freq="h", tz="UTC")
    clear = covariates.frame(index)["clearsky"].to_numpy()
    model = ClearSkyPersistence().fit(pd.Series(0.6 * clear, index=index), covariates)
    forecast = model.predict(pd.Timedelta(hours=24))
    assert np.allclose(forecast.p50, 0.6 * covariates.frame(forecast.index)["clearsky"])


def test_bad_requests_name_what_is_wrong() -> None:
    """A PV model without a site, too short a history, a horizon over 168 h and an unknown
    model each raise TwinError saying so."""
    with pytest.raises(TwinError, match="latitude and longitude"):
        ClearSkyPersistence().fit(weekly_pattern(), Covariates(HOUR))
    with pytest.raises(TwinError, match=r"needs 45 days of history, got 10\.0"):
        Persistence().fit(weekly_pattern(10), Covariates(HOUR))
    model = Persistence().fit(weekly_pattern(), Covariates(HOUR))
    with pytest.raises(TwinError, match="longer than the maximum"):
        model.predict(pd.Timedelta(hours=169))
    with pytest.raises(TwinError, match="unknown model 'prophet'"):
        make_forecaster("prophet")
    with pytest.raises(TwinError, match="has not been fitted"):
        Persistence().predict(HOUR)


def test_regularise_averages_buckets_fills_short_gaps_and_rejects_non_finite_values() -> None:
    """Readings are averaged per step; a 1-h gap is interpolated, a 5-h gap stays missing, and a
    non-finite reading is an error naming its time."""
    stamps = pd.date_range("2024-01-01", periods=24, freq="h", tz="UTC")
    values = pd.Series(np.arange(24.0), index=stamps).drop(stamps[[5, 10, 11, 12, 13, 14]])
    regular = regularise(values, HOUR)
    assert regular.iloc[5] == 5.0
    assert regular.iloc[10:15].isna().all()
    minutes = pd.Series([1.0, 3.0], index=[stamps[0], stamps[0] + pd.Timedelta(minutes=30)])
    assert regularise(minutes, HOUR).iloc[0] == 2.0
    with pytest.raises(TwinError, match="2024-01-01 02:00:00"):
        regularise(pd.Series([1.0, 2.0, np.inf], index=stamps[:3]), HOUR)


def test_learnt_models_beat_the_baselines_on_real_pv_data() -> None:
    """Day-ahead on the last 30 days of Greensboro's year, the ensemble beats persistence by
    more than 25 % and clear-sky persistence too, and its P10-P90 band covers 70-90 %."""
    data = greensboro_pv()
    result = backtest(
        data.series,
        Covariates(data.freq, data.site),
        pd.Timedelta(hours=24),
        models=("persistence", "seasonal_daily", "clearsky_persistence", "ensemble"),
        test_days=30,
    )
    overall = {m.model: m for m in result.overall()}
    ensemble = overall["ensemble"]
    assert ensemble.skill_vs_persistence is not None
    assert ensemble.skill_vs_persistence > 0.25
    assert ensemble.skill_vs_clearsky is not None
    assert ensemble.skill_vs_clearsky > 0
    assert ensemble.mae < overall["seasonal_daily"].mae
    assert 0.7 <= ensemble.coverage_p10_p90 <= 0.9
    assert result.best() == "ensemble"


def test_every_catalogued_model_has_a_name_matching_its_key() -> None:
    """The catalogue's keys are the models' own names (the API and the store rely on it)."""
    for key in FORECASTERS:
        assert make_forecaster(key).name == key
