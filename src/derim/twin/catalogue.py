"""Every forecaster by name, in the order backtests list them (baselines first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from derim.errors import TwinError
from derim.twin.base import Forecaster
from derim.twin.baselines import (
    ClearSkyPersistence,
    Persistence,
    SeasonalMovingAverage,
    SeasonalNaive,
    SeasonalWeekly,
)
from derim.twin.ensemble import Ensemble
from derim.twin.gbm import GradientBoosting
from derim.twin.lstm import LstmForecaster

FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "persistence": Persistence,
    "seasonal_daily": SeasonalNaive,
    "seasonal_weekly": SeasonalWeekly,
    "moving_average": SeasonalMovingAverage,
    "clearsky_persistence": ClearSkyPersistence,
    "gbm": GradientBoosting,
    "lstm": LstmForecaster,
    "ensemble": Ensemble,
}
BASELINES = (
    "persistence",
    "seasonal_daily",
    "seasonal_weekly",
    "moving_average",
    "clearsky_persistence",
)


def make_forecaster(
    name: str, *, horizon: pd.Timedelta | None = None, epochs: int | None = None
) -> Forecaster:
    """A new, unfitted forecaster called ``name``; TwinError lists the known names.

    ``horizon`` and ``epochs`` matter to the LSTM only, which is trained for one horizon (at
    least 24 h).
    """
    factory = FORECASTERS.get(name)
    if factory is None:
        raise TwinError(f"unknown model {name!r}; known: {', '.join(FORECASTERS)}")
    if factory is LstmForecaster:
        options: dict[str, Any] = {}
        if horizon is not None:
            options["horizon"] = max(horizon, pd.Timedelta(hours=24))
        if epochs is not None:
            options["epochs"] = epochs
        return LstmForecaster(**options)
    return factory()


def needs_site(name: str) -> bool:
    """Whether the forecaster called ``name`` needs the device's location."""
    return make_forecaster(name).needs_site
