"""``derim twin``: backtest every forecaster on a CSV file, train models on stored device data.

The commands import the twin's numeric modules when they run, so that ``derim serve`` (which
registers this group) starts without pandas, SciPy, LightGBM and pvlib.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from derim.config import Settings
from derim.errors import DerimError, TwinError
from derim.services import build_store
from derim.storage.registry import DeviceRegistry
from derim.twin.store import ModelStore

if TYPE_CHECKING:
    import pandas as pd

    from derim.twin.backtest import BacktestResult, Metrics
    from derim.twin.training import TrainingReport

TABLE_COLUMNS = (
    ("model", 22),
    ("lead", 8),
    ("MAE", 10),
    ("RMSE", 10),
    ("nMAE", 8),
    ("skill/pers", 12),
    ("skill/clear", 13),
    ("P10-P90", 9),
)


@click.group()
def twin() -> None:
    """Forecasting: backtests on any CSV, training on stored telemetry."""


def _models_option(value: str | None) -> list[str]:
    from derim.twin.catalogue import FORECASTERS

    names = [n.strip() for n in value.split(",")] if value else list(FORECASTERS)
    unknown = [n for n in names if n not in FORECASTERS]
    if unknown:
        raise click.BadParameter(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(FORECASTERS)}"
        )
    return names


@twin.command("backtest")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
@click.option("--time-column", required=True, help="Column of timestamps (ISO 8601; naive = UTC).")
@click.option("--value-column", required=True, help="Column of values to forecast.")
@click.option(
    "--latitude", type=click.FloatRange(-90, 90), help="Degrees north (PV models need it)."
)
@click.option("--longitude", type=click.FloatRange(-180, 180), help="Degrees east.")
@click.option("--horizon", default="24h", show_default=True, help="How far ahead, up to 168h.")
@click.option("--freq", default="15min", show_default=True, help="Step the data is averaged to.")
@click.option(
    "--test-days", type=click.IntRange(1), help="Days at the end scored (default: a fifth)."
)
@click.option("--models", help="Comma-separated model names (default: all).")
@click.option(
    "--format", "output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def backtest_command(
    data_path: Path,
    time_column: str,
    value_column: str,
    latitude: float | None,
    longitude: float | None,
    horizon: str,
    freq: str,
    test_days: int | None,
    models: str | None,
    output: str,
) -> None:
    """Rolling-origin backtest of every forecaster on a CSV file; prints the metrics."""
    from derim.twin.backtest import backtest
    from derim.twin.features import Covariates, Site
    from derim.twin.timeseries import parse_duration, regularise

    try:
        step = parse_duration(freq, "--freq")
        ahead = parse_duration(horizon, "--horizon")
        if (latitude is None) != (longitude is None):
            raise TwinError("give both --latitude and --longitude, or neither")
        site = Site(latitude, longitude) if latitude is not None and longitude is not None else None
        series = regularise(read_csv_series(data_path, time_column, value_column), step)
        with tqdm(
            total=len(_models_option(models)), desc="models", unit="model", leave=False
        ) as bar:

            def advance(message: str) -> None:
                bar.set_postfix_str(message)
                if message.startswith("fitting"):
                    bar.update(1)

            result = backtest(
                series,
                Covariates(step, site),
                ahead,
                models=_models_option(models),
                test_days=test_days,
                progress=advance,
            )
    except DerimError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_json(result) if output == "json" else format_table(result))


@twin.command("train")
@click.argument("device_id")
@click.option("--field", default="power_kw", show_default=True, help="Telemetry field.")
@click.option("--days", type=click.IntRange(1), default=365, show_default=True, help="History.")
@click.option("--horizon", default="24h", show_default=True, help="How far ahead, up to 168h.")
@click.option("--freq", default="15min", show_default=True, help="15min or 1h.")
@click.option("--models", help="Comma-separated model names (default: all).")
@click.pass_context
def train_command(
    ctx: click.Context,
    device_id: str,
    field: str,
    days: int,
    horizon: str,
    freq: str,
    models: str | None,
) -> None:
    """Backtest and train forecasters on a device's stored telemetry; stores the models."""
    from derim.twin.timeseries import parse_duration

    settings: Settings = ctx.obj
    try:
        report = asyncio.run(
            _train_stored(
                settings,
                device_id,
                field,
                timedelta(days=days),
                parse_duration(horizon, "--horizon"),
                parse_duration(freq, "--freq"),
                _models_option(models),
            )
        )
    except DerimError as exc:
        raise click.ClickException(str(exc)) from exc
    for info in report.models:
        marker = "*" if info.model == report.selected else " "
        mae = (info.backtest or {}).get("mae")
        click.echo(f"{marker} {info.model:<22} v{info.version:<4} backtest MAE {mae}")
    click.echo(f"serving {report.selected} by default for {device_id} {field}")


async def _train_stored(
    settings: Settings,
    device_id: str,
    field: str,
    history: timedelta,
    horizon: pd.Timedelta,
    freq: pd.Timedelta,
    models: list[str],
) -> TrainingReport:
    from derim.twin.history import load_history
    from derim.twin.training import TrainingPlan, site_of, train

    registry = DeviceRegistry(settings.database_path)
    store = build_store(settings)
    await registry.open()
    await store.open()
    try:
        device = registry.get(device_id)
        end = datetime.now(UTC)
        series = await load_history(store, device_id, field, end - history, end, freq)
    finally:
        await store.close()
        await registry.close()
    plan = TrainingPlan(
        device_id, field, models, freq, horizon, site_of(device), epochs=settings.lstm_epochs
    )
    with tqdm(total=2 * len(models), desc="training", unit="step") as bar:

        def advance(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        return await asyncio.to_thread(
            train, series, plan, ModelStore(settings.data_dir / "twin"), advance
        )


def read_csv_series(path: Path, time_column: str, value_column: str) -> pd.Series:
    """The value column indexed by the time column; blank values are gaps, text is an error."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, usecols=[time_column, value_column])
    except ValueError as exc:
        raise TwinError(f"{path}: {exc}") from exc
    try:
        index = pd.to_datetime(frame[time_column], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise TwinError(
            f"{path}: column {time_column!r} has a value that is not a time: {exc}"
        ) from exc
    values = pd.to_numeric(frame[value_column], errors="coerce")
    bad = values.isna() & frame[value_column].notna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        text = frame[value_column].iloc[row]
        raise TwinError(f"{path}: row {row + 2} of {value_column!r} is not a number: {text!r}")
    series = pd.Series(
        values.to_numpy(dtype=float), index=pd.DatetimeIndex(index), name=value_column
    )
    if series.dropna().empty:
        raise TwinError(f"{path}: column {value_column!r} has no values")
    return series.dropna()


def format_json(result: BacktestResult) -> str:
    """One object per model: its all-leads metrics and a ``by_lead`` list."""
    models: list[dict[str, object]] = []
    for overall in result.overall():
        entry = overall.as_dict()
        entry.pop("lead")
        entry["by_lead"] = [
            {k: v for k, v in m.as_dict().items() if k != "model"}
            for m in result.metrics
            if m.model == overall.model and m.lead != "all"
        ]
        entry["origins"] = result.origins
        entry["train_end"] = result.train_end.isoformat()
        models.append(entry)
    models.extend({"model": name, "skipped": reason} for name, reason in result.skipped.items())
    return json.dumps(models, indent=2)


def format_table(result: BacktestResult) -> str:
    """A fixed-width table, all leads first, then each lead-time bucket."""
    header = "".join(
        title.rjust(width) if i > 1 else title.ljust(width)
        for i, (title, width) in enumerate(TABLE_COLUMNS)
    )
    lines = [header, "-" * len(header)]
    leads = list(dict.fromkeys(m.lead for m in result.metrics))
    ordered = sorted(result.metrics, key=lambda m: leads.index(m.lead))
    lines.extend(_row(m) for m in ordered)
    lines.append(
        f"{result.origins} origins; models fitted on data up to "
        f"{result.train_end:%Y-%m-%d %H:%M} UTC"
    )
    lines.extend(f"skipped {name}: {reason}" for name, reason in result.skipped.items())
    return "\n".join(lines)


def _row(m: Metrics) -> str:
    cells = [
        m.model,
        m.lead,
        f"{m.mae:.4g}",
        f"{m.rmse:.4g}",
        f"{m.nmae:.3f}",
        _percent(m.skill_vs_persistence),
        _percent(m.skill_vs_clearsky),
        f"{m.coverage_p10_p90:.0%}",
    ]
    return "".join(
        cell.rjust(width) if i > 1 else cell.ljust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, TABLE_COLUMNS, strict=True))
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"
