"""Training for a device: backtest the candidate models, fit each on all data, store, choose."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from derim.models.device import DERDevice
from derim.twin.backtest import backtest
from derim.twin.catalogue import make_forecaster
from derim.twin.features import Covariates, Site
from derim.twin.store import ModelInfo, ModelStore
from derim.twin.timeseries import duration_text

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainingPlan:
    """What to train for one device: its field, candidate models, step, horizon and site."""

    device_id: str
    field: str
    models: Sequence[str]
    freq: pd.Timedelta
    horizon: pd.Timedelta
    site: Site | None = None
    test_days: int | None = None
    epochs: int | None = None
    """LSTM training epochs (the ``lstm_epochs`` setting)."""


@dataclass(frozen=True)
class TrainingReport:
    """The stored models, the backtest that ranked them and the model chosen to serve."""

    selected: str
    models: list[ModelInfo]
    backtest: list[dict[str, object]]
    skipped: dict[str, str] = field(default_factory=dict)


def site_of(device: DERDevice) -> Site | None:
    """The device's location as a Site, if it has one."""
    if device.location is None:
        return None
    return Site(device.location.latitude, device.location.longitude)


def train(
    series: pd.Series, plan: TrainingPlan, store: ModelStore, progress: Progress | None = None
) -> TrainingReport:
    """Backtest ``plan.models`` on ``series``, then fit and store each on all of it."""
    covariates = Covariates(plan.freq, plan.site)
    result = backtest(
        series,
        covariates,
        plan.horizon,
        models=plan.models,
        test_days=plan.test_days,
        progress=progress,
        epochs=plan.epochs,
    )
    overall = {m.model: m.as_dict() for m in result.overall()}
    stored: list[ModelInfo] = []
    for name in overall:
        if progress:
            progress(f"training {name} on all data")
        began = time.perf_counter()
        model = make_forecaster(name, horizon=plan.horizon, epochs=plan.epochs)
        model.fit(series, covariates)
        info = ModelInfo(
            device_id=plan.device_id,
            field=plan.field,
            model=name,
            trained_at=datetime.now(UTC),
            freq=duration_text(plan.freq),
            horizon=duration_text(plan.horizon),
            history_start=series.index[0].to_pydatetime(),
            history_end=series.index[-1].to_pydatetime(),
            points=int(series.notna().sum()),
            train_seconds=round(time.perf_counter() - began, 3),
            latitude=plan.site.latitude if plan.site else None,
            longitude=plan.site.longitude if plan.site else None,
            backtest=overall[name],
        )
        stored.append(store.save(model, info))
    selected = result.best()
    store.select(plan.device_id, plan.field, selected)
    metrics = [m.as_dict() for m in result.metrics]
    return TrainingReport(selected, stored, metrics, result.skipped)
