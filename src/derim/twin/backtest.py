"""Rolling-origin backtests: every forecaster, the same origins, metrics per lead-time bucket.

Each model is fitted once on the data before the test window; then from each origin (every day
start in the window) it forecasts ``horizon`` ahead from the history up to that origin only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from derim.errors import TwinError
from derim.twin.base import Forecast, Forecaster
from derim.twin.catalogue import FORECASTERS, make_forecaster
from derim.twin.features import Covariates
from derim.twin.timeseries import horizon_steps, steps_per_day

BUCKET_EDGES_H = (1, 6, 12, 24, 48, 168)
"""Upper edges (hours) of the lead-time buckets metrics are reported for."""
REFERENCES = ("persistence", "clearsky_persistence")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Metrics:
    """Errors of one model over one lead-time bucket (value units, e.g. W)."""

    model: str
    lead: str
    mae: float
    rmse: float
    nmae: float
    """MAE over the mean measured value."""
    skill_vs_persistence: float | None
    """1 - MAE / MAE of persistence; positive is better than persistence."""
    skill_vs_clearsky: float | None
    """1 - MAE / MAE of clear-sky persistence (PV only)."""
    coverage_p10_p90: float
    """Share of measurements inside the P10-P90 band (steps where both are zero excluded)."""
    points: int

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict, floats rounded to 4 significant places."""
        return {k: _round(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BacktestResult:
    """Every model's metrics, the origins used and the models that could not run."""

    metrics: list[Metrics]
    origins: int
    train_end: pd.Timestamp
    skipped: dict[str, str]

    def overall(self) -> list[Metrics]:
        """The all-leads row of each model."""
        return [m for m in self.metrics if m.lead == "all"]

    def best(self) -> str:
        """The model with the lowest overall MAE."""
        return min(self.overall(), key=lambda m: m.mae).model


def backtest(
    series: pd.Series,
    covariates: Covariates,
    horizon: pd.Timedelta,
    *,
    models: Sequence[str] = tuple(FORECASTERS),
    test_days: int | None = None,
    progress: Progress | None = None,
    epochs: int | None = None,
) -> BacktestResult:
    """Fit each model before the test window and score its forecasts from every day start in it.

    ``test_days`` defaults to a fifth of the series (at least 7 days); ``epochs`` is the LSTM's.
    """
    per_day = steps_per_day(covariates.freq)
    steps = horizon_steps(horizon, covariates.freq)
    days = test_days if test_days is not None else max(7, len(series) // per_day // 5)
    first_origin = _day_start_position(series, len(series) - days * per_day)
    origins = list(range(first_origin, len(series) - steps + 1, per_day))
    if not origins:
        raise TwinError(f"no {horizon} horizon fits in a {days}-day test window")
    train = series.iloc[:first_origin]
    actual = np.vstack([series.to_numpy(dtype=float)[o : o + steps] for o in origins])
    forecasts: dict[str, list[Forecast]] = {}
    skipped: dict[str, str] = {}
    for name in models:
        model = make_forecaster(name, horizon=horizon, epochs=epochs)
        if model.needs_site and covariates.site is None:
            skipped[name] = "needs a latitude and longitude"
            continue
        if progress:
            progress(f"fitting {name}")
        try:
            model.fit(train, covariates)
        except TwinError as exc:
            skipped[name] = str(exc)
            continue
        forecasts[name] = [_forecast(model, series, origin, horizon) for origin in origins]
    if not forecasts:
        raise TwinError("no model could be fitted: " + "; ".join(skipped.values()))
    metrics = _score(forecasts, actual, covariates.freq)
    return BacktestResult(metrics, len(origins), train.index[-1], skipped)


def _day_start_position(series: pd.Series, position: int) -> int:
    """The first position at or after ``position`` whose timestamp is midnight UTC."""
    index = series.index
    for candidate in range(max(position, 0), len(index)):
        stamp = index[candidate]
        if stamp.hour == 0 and stamp.minute == 0:
            return candidate
    raise TwinError("the series has no day start in its test window")


def _forecast(model: Forecaster, series: pd.Series, origin: int, horizon: pd.Timedelta) -> Forecast:
    """``model``'s forecast from ``origin`` seeing only the context it needs before it."""
    context = model.context_days * steps_per_day(model.freq)
    return model.predict(horizon, series.iloc[max(0, origin - context) : origin])


def _score(
    forecasts: dict[str, list[Forecast]], actual: np.ndarray, freq: pd.Timedelta
) -> list[Metrics]:
    """Metrics per model and lead-time bucket, skills against the reference models."""
    lead_hours = np.arange(1, actual.shape[1] + 1) * (freq / pd.Timedelta(hours=1))
    buckets = _buckets(lead_hours)
    reference_mae: dict[tuple[str, str], float] = {}
    rows: list[tuple[str, str, float, float, float, float, int]] = []
    mean_actual = float(np.nanmean(actual))
    for name, runs in forecasts.items():
        p50 = np.vstack([f.p50 for f in runs])
        p10 = np.vstack([f.p10 for f in runs])
        p90 = np.vstack([f.p90 for f in runs])
        for label, chosen in buckets:
            a, m = actual[:, chosen], p50[:, chosen]
            ok = np.isfinite(a)
            error = m[ok] - a[ok]
            mae = float(np.mean(np.abs(error)))
            rmse = float(np.sqrt(np.mean(error**2)))
            low, high = p10[:, chosen][ok], p90[:, chosen][ok]
            informative = (a[ok] != 0) | (high != 0)
            inside = (a[ok] >= low) & (a[ok] <= high)
            coverage = float(inside[informative].mean()) if informative.any() else 1.0
            reference_mae[(name, label)] = mae
            rows.append((name, label, mae, rmse, mae / mean_actual, coverage, int(ok.sum())))
    return [
        Metrics(
            model=name,
            lead=label,
            mae=mae,
            rmse=rmse,
            nmae=nmae,
            skill_vs_persistence=_skill(mae, reference_mae.get((REFERENCES[0], label))),
            skill_vs_clearsky=_skill(mae, reference_mae.get((REFERENCES[1], label))),
            coverage_p10_p90=coverage,
            points=points,
        )
        for name, label, mae, rmse, nmae, coverage, points in rows
    ]


def _buckets(lead_hours: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """("all", every lead) then one (label, mask) per non-empty lead-time bucket."""
    buckets = [("all", np.ones(len(lead_hours), dtype=bool))]
    lower = 0.0
    for upper in BUCKET_EDGES_H:
        mask = (lead_hours > lower) & (lead_hours <= upper)
        if mask.any():
            buckets.append((f"{lower:g}-{upper:g}h", mask))
        lower = upper
    return buckets


def _skill(mae: float, reference: float | None) -> float | None:
    """1 - mae / reference, or None without a usable reference."""
    if reference is None or reference == 0:
        return None
    return 1.0 - mae / reference


def _round(value: object) -> object:
    """Floats to 4 significant digits; other values unchanged."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value
