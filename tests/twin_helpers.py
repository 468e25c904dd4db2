"""A quick served model for twin tests: a same-time-yesterday forecaster fitted in-process on a
synthetic daily power curve, stored and selected like a training job would, and the recent
readings it forecasts from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from derim.models.telemetry import SolarTelemetry
from derim.twin.baselines import SeasonalNaive
from derim.twin.features import Covariates
from derim.twin.store import ModelInfo, ModelStore

FREQ = pd.Timedelta(minutes=15)
MODEL = "seasonal_daily"
FIT_DAYS = 46
"""Enough history for the forecaster's calibration (28 days) and context (15 days)."""
CONTEXT_DAYS = 16
"""Days of readings before now that serving a forecast reads."""


def daily_curve(end: pd.Timestamp, days: int) -> pd.Series:
    """``days`` of 15-min power (kW) up to ``end``: 0 at night, up to 4 kW at noon UTC."""
    index = pd.date_range(end - pd.Timedelta(days=days), end, freq=FREQ, inclusive="left")
    hours = index.hour.to_numpy() + index.minute.to_numpy() / 60
    power = np.clip(4.0 * np.sin(np.pi * (hours - 6) / 12), 0.0, None)
    return pd.Series(power, index=index, name="power_kw")


def save_quick_model(root: Path, device_id: str) -> None:
    """Fit, store and select ``seasonal_daily`` for the device's ``power_kw`` under ``root``."""
    history = daily_curve(pd.Timestamp.now(tz="UTC").floor("D"), FIT_DAYS)
    model = SeasonalNaive().fit(history, Covariates(FREQ))
    info = ModelInfo(
        device_id=device_id,
        field="power_kw",
        model=MODEL,
        trained_at=datetime.now(UTC),
        freq="15min",
        horizon="24h",
        history_start=history.index[0].to_pydatetime(),
        history_end=history.index[-1].to_pydatetime(),
        points=len(history),
        train_seconds=0.0,
    )
    store = ModelStore(root)
    store.save(model, info)
    store.select(device_id, "power_kw", MODEL)


def recent_readings(device_id: str) -> list[SolarTelemetry]:
    """The last ``CONTEXT_DAYS`` days of the curve up to now, as stored readings."""
    curve = daily_curve(pd.Timestamp.now(tz="UTC").floor(FREQ), CONTEXT_DAYS)
    return [
        SolarTelemetry(device_id=device_id, timestamp=t.to_pydatetime(), power_kw=float(v))
        for t, v in curve.items()
    ]
