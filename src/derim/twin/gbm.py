"""A gradient-boosted (LightGBM) forecaster on lags, calendar terms and solar geometry.

One model serves every lead time: each training row is one (origin, target) pair whose features
are what was known at the origin plus the target's calendar terms and sun position. With a site
(PV) it learns the clear-sky index from yesterday's and the last three days' indices; without one
(load) it learns the value from yesterday, last week, the 7-day mean and the last value.
"""

from __future__ import annotations

from typing import ClassVar

import lightgbm
import numpy as np
import pandas as pd

from derim.twin.base import Forecaster
from derim.twin.baselines import last_finite, seasonal_sources, take
from derim.twin.timeseries import steps_per_day

MAX_TRAINING_ROWS = 200_000
"""Training rows are thinned (by spacing origins further apart) to stay under this."""
CLEAR_FLOOR = 0.01
"""Clear-sky irradiance (kW/m²) below which a PV model forecasts zero (night)."""
TRAINING_HORIZON_DAYS = 2
"""Lead times the model learns from; longer horizons reuse the two-day relationship."""


class GradientBoosting(Forecaster):
    """LightGBM with an L1 (median) objective on known-at-origin features."""

    name: ClassVar[str] = "gbm"
    description: ClassVar[str] = "LightGBM on lags, calendar and solar geometry"

    def __init__(self, trees: int = 300, seed: int = 0) -> None:
        super().__init__()
        self.trees = trees
        self.seed = seed
        self.booster: lightgbm.Booster | None = None
        self.by_clear_sky = False
        """With a site, the model learns the clear-sky index and multiplies by the clear sky."""

    def _fit(self, history: pd.Series) -> None:
        per_day = steps_per_day(self.freq)
        values = history.to_numpy(dtype=float)
        steps = TRAINING_HORIZON_DAYS * per_day
        first = 8 * per_day
        last = len(values) - steps
        spacing = max(per_day // 4, (last - first) * steps // MAX_TRAINING_ROWS + 1)
        origins = np.arange(first, last, spacing)
        covariates = self.fitted_covariates().frame(pd.DatetimeIndex(history.index))
        clear = _clear_column(covariates)
        self.by_clear_sky = bool(clear.any())
        rows = [
            self._features(
                values[: origin + 1],
                clear[: origin + 1],
                covariates.iloc[origin + 1 : origin + 1 + steps],
            )
            for origin in origins
        ]
        targets = np.concatenate([values[origin + 1 : origin + 1 + steps] for origin in origins])
        target_clear = np.concatenate(
            [clear[origin + 1 : origin + 1 + steps] for origin in origins]
        )
        design = np.vstack(rows)
        if self.by_clear_sky:
            keep = np.isfinite(targets) & (target_clear > CLEAR_FLOOR)
            labels = targets[keep] / target_clear[keep]
            weights = target_clear[keep]
        else:
            keep = np.isfinite(targets)
            labels, weights = targets[keep], None
        dataset = lightgbm.Dataset(design[keep], labels, weight=weights, free_raw_data=True)
        params = {
            "objective": "l1",
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.9,
            "num_threads": 1,  # OpenMP spins when the cores are busy (training beside serving)
            "seed": self.seed,
            "verbosity": -1,
        }
        self.booster = lightgbm.train(params, dataset, num_boost_round=self.trees)

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        assert self.booster is not None
        covariates = self.fitted_covariates()
        context = history.iloc[-8 * steps_per_day(self.freq) :]
        clear = _clear_column(covariates.frame(pd.DatetimeIndex(context.index)))
        target = covariates.frame(index)
        design = self._features(context.to_numpy(dtype=float), clear, target)
        predicted = np.asarray(self.booster.predict(design), dtype=float)
        if not self.by_clear_sky:
            return predicted
        target_clear = _clear_column(target)
        return np.where(target_clear > CLEAR_FLOOR, predicted * target_clear, 0.0)

    def _features(self, values: np.ndarray, clear: np.ndarray, target: pd.DataFrame) -> np.ndarray:
        """Feature rows for each target step after ``values`` ends (``clear`` aligns with it)."""
        steps = len(target)
        lead_hours = np.arange(1, steps + 1) * (self.freq / pd.Timedelta(hours=1))
        if self.by_clear_sky:
            known = _clear_sky_features(values, clear, steps, steps_per_day(self.freq))
            seasonal = ("hour_sin", "hour_cos", "cos_zenith", "clearsky")
        else:
            known = _load_features(values, steps, steps_per_day(self.freq))
            seasonal = tuple(target.columns)
        calendar = [target[name].to_numpy(dtype=float) for name in seasonal]
        return np.column_stack([lead_hours, *known, *calendar])


def _clear_sky_features(
    values: np.ndarray, clear: np.ndarray, steps: int, per_day: int
) -> list[np.ndarray]:
    """Clear-sky indices known at the origin: same time yesterday and each of the last 3 days."""
    sources = seasonal_sources(len(values), steps, per_day)
    yesterday, clear_yesterday = take(values, sources), take(clear, sources)
    with np.errstate(invalid="ignore", divide="ignore"):
        hourly = np.where(clear_yesterday > CLEAR_FLOOR, yesterday / clear_yesterday, np.nan)
    daily = [np.full(steps, _day_index(values, clear, per_day, day)) for day in range(3)]
    return [hourly, *daily]


def _load_features(values: np.ndarray, steps: int, per_day: int) -> list[np.ndarray]:
    """Lags known at the origin: yesterday, last week, the 7-day mean, the last value."""
    yesterday = take(values, seasonal_sources(len(values), steps, per_day))
    last_week = take(values, seasonal_sources(len(values), steps, 7 * per_day))
    days = [take(values, seasonal_sources(len(values), steps, per_day, lag)) for lag in range(7)]
    with np.errstate(invalid="ignore"):
        day_mean = np.nanmean(np.vstack(days), axis=0)
    return [yesterday, last_week, day_mean, np.full(steps, last_finite(values))]


def _day_index(values: np.ndarray, clear: np.ndarray, per_day: int, days_back: int) -> float:
    """Clear-sky index (energy over clear-sky energy) of the day ``days_back`` before the end."""
    end = len(values) - days_back * per_day
    window = slice(max(0, end - per_day), end)
    measured, sky = values[window], clear[window]
    usable = np.isfinite(measured)
    energy = float(sky[usable].sum())
    return float(measured[usable].sum()) / energy if energy > 0 else float("nan")


def _clear_column(frame: pd.DataFrame) -> np.ndarray:
    """The ``clearsky`` covariate, or zeros when the model has no site."""
    if "clearsky" in frame.columns:
        return np.asarray(frame["clearsky"], dtype=float)
    return np.zeros(len(frame))
