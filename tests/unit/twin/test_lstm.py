"""The LSTM forecaster: forecast shape and bands, accuracy against a baseline on real PV data,
pickling, the trained horizon, gaps, and that importing it does not load torch."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from derim.errors import TwinError
from derim.twin.base import Forecaster
from derim.twin.baselines import SeasonalNaive
from derim.twin.datasets import Dataset, greensboro_pv
from derim.twin.features import Covariates
from derim.twin.lstm import LstmForecaster

DAY = pd.Timedelta(hours=24)
TRAIN = slice("2021-05-01", "2021-08-31")
"""About 120 days of history to fit on; September is held out."""
GAP = slice("2021-06-10", "2021-06-12")
"""Three days knocked out of the training history."""


@pytest.fixture(scope="module")
def data() -> Dataset:
    """A year of hourly AC power (W) of the Greensboro PV system."""
    return greensboro_pv()


@pytest.fixture(scope="module")
def lstm(data: Dataset) -> LstmForecaster:
    """An LSTM fitted on May-August, with a three-day gap, on a small training budget."""
    history = data.series[TRAIN].copy()
    history[GAP] = np.nan
    model = LstmForecaster(epochs=30, max_train_seconds=30.0, seed=1)
    return model.fit(history, Covariates(data.freq, data.site))


def _day_ahead_mae(model: Forecaster, series: pd.Series, days: pd.DatetimeIndex) -> float:
    """Mean absolute error (W) of 24 h forecasts made at the start of each of ``days``."""
    errors = []
    for day in days:
        forecast = model.predict(DAY, series[: day - pd.Timedelta(hours=1)])
        errors.append(np.abs(forecast.p50 - series[forecast.index].to_numpy()))
    return float(np.mean(np.concatenate(errors)))


def test_forecast_index_length_and_ordered_bands(lstm: LstmForecaster, data: Dataset) -> None:
    """A 24 h forecast has 24 hourly steps right after the history, with P10 <= P50 <= P90."""
    forecast = lstm.predict(DAY)
    assert lstm.history is not None
    expected = pd.date_range(lstm.history.index[-1] + data.freq, periods=24, freq=data.freq)
    pd.testing.assert_index_equal(forecast.index, expected)
    assert forecast.model == "lstm"
    assert np.all(np.isfinite(forecast.p50))
    assert np.all(forecast.p10 <= forecast.p50)
    assert np.all(forecast.p50 <= forecast.p90)


def test_shorter_horizon_is_the_start_of_the_trained_one(lstm: LstmForecaster) -> None:
    """A 6 h forecast is the first 6 steps of the 24 h forecast."""
    full = lstm.predict(DAY)
    short = lstm.predict(pd.Timedelta(hours=6))
    np.testing.assert_allclose(short.p50, full.p50[:6], rtol=1e-5, atol=1e-6)


def test_beats_same_time_yesterday_on_a_held_out_month(lstm: LstmForecaster, data: Dataset) -> None:
    """Day-ahead MAE over September is lower than the same-time-yesterday baseline's."""
    covariates = Covariates(data.freq, data.site)
    baseline = SeasonalNaive().fit(data.series[TRAIN], covariates)
    days = pd.date_range("2021-09-01", "2021-09-29", freq="D", tz="UTC")
    lstm_mae = _day_ahead_mae(lstm, data.series, days)
    baseline_mae = _day_ahead_mae(baseline, data.series, days)
    assert lstm_mae < baseline_mae


def test_pickle_round_trip_gives_identical_forecasts(lstm: LstmForecaster) -> None:
    """A pickled and restored model forecasts exactly what the original does."""
    restored = pickle.loads(pickle.dumps(lstm))
    before, after = lstm.predict(DAY), restored.predict(DAY)
    for band in ("p10", "p50", "p90"):
        np.testing.assert_array_equal(getattr(after, band), getattr(before, band))


def test_same_seed_trains_the_same_model(data: Dataset) -> None:
    """Two fits with the same seed (time budget not reached) give identical forecasts."""
    history = data.series["2021-03-01":"2021-04-30"]
    covariates = Covariates(data.freq, data.site)
    first, second = (
        LstmForecaster(epochs=2, max_train_seconds=120.0, seed=7).fit(history, covariates)
        for _ in range(2)
    )
    np.testing.assert_array_equal(first.predict(DAY).p50, second.predict(DAY).p50)


def test_horizon_longer_than_trained_is_refused(lstm: LstmForecaster) -> None:
    """Asking for 48 h from a model trained for 24 h raises TwinError naming both."""
    with pytest.raises(TwinError, match=r"24 h horizon; 48 h was requested"):
        lstm.predict(pd.Timedelta(hours=48))


def test_horizon_outside_24_to_168_hours_is_refused() -> None:
    """The trained horizon must be between 24 h and 168 h."""
    with pytest.raises(TwinError, match="horizon"):
        LstmForecaster(horizon=pd.Timedelta(hours=12))
    with pytest.raises(TwinError, match="horizon"):
        LstmForecaster(horizon=pd.Timedelta(hours=169))


def test_missing_recent_values_still_give_a_finite_forecast(
    lstm: LstmForecaster, data: Dataset
) -> None:
    """NaNs in the history given to predict, even its last day, are filled, not propagated."""
    history = data.series["2021-08-20":"2021-09-05"].copy()
    history.iloc[-30:] = np.nan
    forecast = lstm.predict(DAY, history)
    assert np.all(np.isfinite(forecast.p50))


def test_unfitted_model_refuses_to_forecast() -> None:
    """predict before fit raises TwinError."""
    with pytest.raises(TwinError, match="not been fitted"):
        LstmForecaster().predict(DAY)


def test_importing_the_module_does_not_import_torch() -> None:
    """``import derim.twin.lstm`` leaves torch out of sys.modules (the server starts without it)."""
    code = "import sys, derim.twin.lstm; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"
