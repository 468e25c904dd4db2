"""The forecaster interface: ``fit(history, covariates)``, ``predict(horizon)`` -> P10/P50/P90."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from derim.errors import TwinError
from derim.twin.features import Covariates
from derim.twin.timeseries import horizon_steps, steps_per_day

HOURS_PER_DAY = 24


@dataclass(frozen=True)
class Forecast:
    """A forecast on a regular UTC index (interval starts): median and 10th/90th percentiles."""

    model: str
    index: pd.DatetimeIndex
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray

    def frame(self) -> pd.DataFrame:
        """The forecast as a DataFrame with columns p10, p50, p90."""
        return pd.DataFrame({"p10": self.p10, "p50": self.p50, "p90": self.p90}, index=self.index)


@dataclass(frozen=True)
class ResidualBands:
    """P10/P90 offsets from the median by target hour of day, from out-of-sample residuals."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fit(cls, actual: np.ndarray, predicted: np.ndarray, hours: np.ndarray) -> ResidualBands:
        """10th/90th percentile of ``actual - predicted`` for each hour of day (0-23)."""
        residual = actual - predicted
        low = np.zeros(HOURS_PER_DAY)
        high = np.zeros(HOURS_PER_DAY)
        overall = residual[np.isfinite(residual)]
        for hour in range(HOURS_PER_DAY):
            chosen = residual[(hours == hour) & np.isfinite(residual)]
            sample = chosen if chosen.size >= 5 else overall
            if sample.size:
                low[hour], high[hour] = np.quantile(sample, [0.1, 0.9])
        return cls(np.minimum(low, 0.0), np.maximum(high, 0.0))

    def apply(self, p50: np.ndarray, index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
        """The P10 and P90 around ``p50`` at ``index``."""
        hours = index.hour.to_numpy()
        return p50 + self.low[hours], p50 + self.high[hours]


class Forecaster(ABC):
    """A model that learns from a regular series and forecasts P10/P50/P90 for any horizon.

    ``fit`` holds back the last ``calibration_days`` of the history to learn the P10-P90 band
    from day-ahead residuals, then refits on all of it unless ``refit_after_calibration`` is false.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    needs_site: ClassVar[bool] = False
    refit_after_calibration: ClassVar[bool] = True
    calibration_days: ClassVar[int] = 28
    context_days: ClassVar[int] = 15
    """Days of history ``predict`` needs before the forecast starts."""

    def __init__(self) -> None:
        self.covariates: Covariates | None = None
        self.history: pd.Series | None = None
        self.bands: ResidualBands | None = None
        self.nonnegative = False

    @property
    def freq(self) -> pd.Timedelta:
        """Step of the series this model was fitted on."""
        return self.fitted_covariates().freq

    def fitted_covariates(self) -> Covariates:
        """The covariates given to ``fit``."""
        if self.covariates is None:
            raise TwinError(f"forecaster {self.name} has not been fitted")
        return self.covariates

    def fit(self, history: pd.Series, covariates: Covariates) -> Self:
        """Learn from ``history`` (regular at ``covariates.freq``, UTC index); returns self."""
        if self.needs_site and covariates.site is None:
            raise TwinError(f"forecaster {self.name} needs the device's latitude and longitude")
        per_day = steps_per_day(covariates.freq)
        needed = (self.calibration_days + self.context_days + 2) * per_day
        if len(history) < needed:
            days = len(history) / per_day
            raise TwinError(
                f"forecaster {self.name} needs {needed // per_day} days of history, got {days:.1f}"
            )
        self.covariates = covariates
        self.nonnegative = bool(np.nanmin(history.to_numpy()) >= 0)
        held_back = self.calibration_days * per_day
        self._fit(history.iloc[:-held_back])
        self.bands = self._calibrate(history, len(history) - held_back, per_day)
        if self.refit_after_calibration:
            self._fit(history)
        self.history = history.iloc[-self.context_days * per_day :]
        return self

    def predict(self, horizon: pd.Timedelta, history: pd.Series | None = None) -> Forecast:
        """Forecast ``horizon`` ahead of the end of ``history`` (default: the fitted history)."""
        covariates, bands = self._fitted()
        context = self.history if history is None else history
        assert context is not None
        steps = horizon_steps(horizon, covariates.freq)
        start = context.index[-1] + covariates.freq
        index = pd.date_range(start, periods=steps, freq=covariates.freq)
        p50 = self._point(context, index)
        p10, p90 = bands.apply(p50, index)
        if self.nonnegative:
            p10, p50, p90 = (np.clip(values, 0.0, None) for values in (p10, p50, p90))
        return Forecast(self.name, index, p10, p50, p90)

    def _calibrate(self, history: pd.Series, start: int, per_day: int) -> ResidualBands:
        """Residual bands from day-ahead forecasts at each day start in ``history[start:]``."""
        actual: list[np.ndarray] = []
        predicted: list[np.ndarray] = []
        hours: list[np.ndarray] = []
        for origin in range(start, len(history) - per_day + 1, per_day):
            index = history.index[origin : origin + per_day]
            predicted.append(self._point(history.iloc[:origin], pd.DatetimeIndex(index)))
            actual.append(history.iloc[origin : origin + per_day].to_numpy())
            hours.append(index.hour.to_numpy())
        return ResidualBands.fit(
            np.concatenate(actual), np.concatenate(predicted), np.concatenate(hours)
        )

    def _fitted(self) -> tuple[Covariates, ResidualBands]:
        if self.bands is None:
            raise TwinError(f"forecaster {self.name} has not been fitted")
        return self.fitted_covariates(), self.bands

    def _fit(self, history: pd.Series) -> None:  # noqa: B027 - baselines learn nothing
        """Learn model parameters from ``history``; baselines have none."""

    @abstractmethod
    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        """The median forecast at ``index``, which starts one step after ``history`` ends."""
