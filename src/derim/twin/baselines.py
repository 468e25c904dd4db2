"""Baseline forecasters every model must beat: persistence, seasonal naive, seasonal moving
average and clear-sky-index persistence."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from derim.twin.base import Forecaster
from derim.twin.timeseries import steps_per_day


def seasonal_sources(
    history_length: int, steps: int, period: int, lag_periods: int = 0
) -> np.ndarray:
    """Positions in the history of the same phase ``period`` steps back for each of ``steps`` ahead.

    Step ``j`` (1-based) takes the latest whole number of periods back that lands in the history,
    plus ``lag_periods`` more; positions before the start are -1.
    """
    ahead = np.arange(1, steps + 1)
    periods_back = np.ceil(ahead / period).astype(int) + lag_periods
    sources = history_length - 1 + ahead - periods_back * period
    return np.where(sources >= 0, sources, -1)


def take(values: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``values[sources]`` with NaN where a source is -1."""
    out: np.ndarray = values[np.clip(sources, 0, None)].astype(float)
    out[sources < 0] = np.nan
    return out


def last_finite(values: np.ndarray) -> float:
    """The last finite value, or 0 when there is none."""
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else 0.0


class Persistence(Forecaster):
    """The last observed value, held for the whole horizon."""

    name: ClassVar[str] = "persistence"
    description: ClassVar[str] = "last observed value held flat"

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        return np.full(len(index), last_finite(history.to_numpy()))


class SeasonalNaive(Forecaster):
    """The value at the same time one period earlier (yesterday or last week)."""

    name: ClassVar[str] = "seasonal_daily"
    description: ClassVar[str] = "same time yesterday"
    period_days: ClassVar[int] = 1

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        values = history.to_numpy()
        period = self.period_days * steps_per_day(self.freq)
        point = take(values, seasonal_sources(len(values), len(index), period))
        return np.where(np.isfinite(point), point, last_finite(values))


class SeasonalWeekly(SeasonalNaive):
    """The value at the same time last week."""

    name: ClassVar[str] = "seasonal_weekly"
    description: ClassVar[str] = "same time last week"
    period_days: ClassVar[int] = 7


class SeasonalMovingAverage(Forecaster):
    """The mean of the same time of day over the last ``days`` days."""

    name: ClassVar[str] = "moving_average"
    description: ClassVar[str] = "mean of the same time of day over the last 7 days"
    days: ClassVar[int] = 7

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        values = history.to_numpy()
        per_day = steps_per_day(self.freq)
        lags = [
            take(values, seasonal_sources(len(values), len(index), per_day, lag))
            for lag in range(self.days)
        ]
        stacked = np.vstack(lags)
        counts = np.isfinite(stacked).sum(axis=0)
        point = np.nansum(stacked, axis=0) / np.maximum(counts, 1)
        return np.where(counts > 0, point, last_finite(values))


class ClearSkyPersistence(Forecaster):
    """Yesterday's clear-sky index (energy over clear-sky energy) times tomorrow's clear sky."""

    name: ClassVar[str] = "clearsky_persistence"
    description: ClassVar[str] = "last day's clear-sky index times the clear-sky profile"
    needs_site: ClassVar[bool] = True

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        covariates = self.fitted_covariates()
        per_day = steps_per_day(covariates.freq)
        recent = history.iloc[-per_day:]
        clear_recent = covariates.frame(pd.DatetimeIndex(recent.index))["clearsky"].to_numpy()
        measured = recent.to_numpy()
        usable = np.isfinite(measured)
        clear_energy = float(clear_recent[usable].sum())
        index_value = float(measured[usable].sum()) / clear_energy if clear_energy > 0 else 0.0
        clear = np.asarray(covariates.frame(index)["clearsky"], dtype=float)
        return index_value * clear
