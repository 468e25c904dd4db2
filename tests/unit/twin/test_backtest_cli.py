"""``derim twin backtest`` on a CSV file (SimBench's real household load), its JSON and table
output, its errors for bad files, and the versioned model store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from derim.cli import main
from derim.errors import NotFoundError
from derim.twin.baselines import SeasonalNaive
from derim.twin.datasets import simbench_load
from derim.twin.features import Covariates
from derim.twin.store import ModelInfo, ModelStore

BASELINES = "persistence,seasonal_daily,seasonal_weekly,moving_average,clearsky_persistence"


@pytest.fixture(scope="module")
def load_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ninety days of SimBench's H0-A household load at 15 min, as a CSV file."""
    series = simbench_load("H0-A").series.iloc[: 90 * 96]
    path = tmp_path_factory.mktemp("csv") / "load.csv"
    series.rename("load_w").to_frame().rename_axis("time").to_csv(path)
    return path


def backtest(*args: str) -> tuple[int, str]:
    """Run ``derim twin backtest`` in-process; its exit code and standard output (with the
    error message when it failed; the progress bar goes to standard error)."""
    result = CliRunner().invoke(main, ["twin", "backtest", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_json_output_has_one_object_per_model_with_metrics_per_lead(load_csv: Path) -> None:
    """JSON output lists each model once with MAE, RMSE, nMAE, skills and coverage, then its
    lead-time buckets; a PV model without a location is listed as skipped."""
    code, output = backtest(
        "--data", str(load_csv), "--time-column", "time", "--value-column", "load_w",
        "--horizon", "24h", "--freq", "15min", "--test-days", "14", "--models", BASELINES,
        "--format", "json",
    )  # fmt: skip
    assert code == 0, output
    models = {entry["model"]: entry for entry in json.loads(output)}
    assert set(models) == set(BASELINES.split(","))
    assert models["clearsky_persistence"] == {
        "model": "clearsky_persistence",
        "skipped": "needs a latitude and longitude",
    }
    daily = models["seasonal_daily"]
    assert daily["origins"] == 13  # the series ends at 22:45 UTC: the last day is not whole
    assert daily["mae"] > 0
    assert daily["rmse"] >= daily["mae"]
    assert models["persistence"]["skill_vs_persistence"] == 0
    assert daily["skill_vs_persistence"] == pytest.approx(
        1 - daily["mae"] / models["persistence"]["mae"], abs=1e-3
    )
    assert [bucket["lead"] for bucket in daily["by_lead"]] == ["0-1h", "1-6h", "6-12h", "12-24h"]
    assert 0 <= daily["coverage_p10_p90"] <= 1


def test_table_output_lists_every_model_and_lead(load_csv: Path) -> None:
    """The table has a header, an all-leads row per model and the origins line."""
    code, output = backtest(
        "--data", str(load_csv), "--time-column", "time", "--value-column", "load_w",
        "--horizon", "6h", "--freq", "1h", "--test-days", "10",
        "--models", "persistence,moving_average",
    )  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].split()[:4] == ["model", "lead", "MAE", "RMSE"]
    assert sum(line.startswith("moving_average") and " all " in line for line in lines) == 1
    assert "10 origins" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--value-column", "missing"], "missing"),
        (["--value-column", "load_w", "--latitude", "50"], "both --latitude and --longitude"),
        (["--value-column", "load_w", "--horizon", "200h"], "longer than the maximum"),
        (["--value-column", "load_w", "--freq", "7min"], "must divide a day"),
        (["--value-column", "load_w", "--models", "prophet"], "unknown model(s) prophet"),
    ],
)
def test_bad_arguments_are_named(load_csv: Path, args: list[str], message: str) -> None:
    """A missing column, half a location, too long a horizon, an odd step or an unknown model
    fails with a message naming it."""
    code, output = backtest("--data", str(load_csv), "--time-column", "time", *args)
    assert code != 0
    assert message in output


def test_a_text_value_is_reported_with_its_row(tmp_path: Path) -> None:
    """A value that is not a number is an error naming its row; blank values are gaps."""
    path = tmp_path / "bad.csv"
    path.write_text("time,value\n2024-01-01T00:00Z,1\n2024-01-01T01:00Z,\n2024-01-01T02:00Z,abc\n")
    code, output = backtest("--data", str(path), "--time-column", "time", "--value-column", "value")
    assert code != 0
    assert "row 4 of 'value' is not a number: 'abc'" in output


def test_the_model_store_versions_models_and_remembers_the_selection(tmp_path: Path) -> None:
    """Each save is a new version with its metadata; a load gives the latest, which forecasts
    like the original; the selection is kept; an unknown model is NotFoundError."""
    series = simbench_load("H0-A").series.iloc[: 60 * 96]
    model = SeasonalNaive().fit(series, Covariates(pd.Timedelta(minutes=15)))
    store = ModelStore(tmp_path)
    info = ModelInfo(
        device_id="meter-1", field="power_kw", model=model.name, trained_at=series.index[-1],
        freq="15min", horizon="24h", history_start=series.index[0], history_end=series.index[-1],
        points=len(series), train_seconds=0.1,
    )  # fmt: skip
    assert store.save(model, info).version == 1
    assert store.save(model, info).version == 2
    loaded, loaded_info = store.load("meter-1", "power_kw", "seasonal_daily")
    assert loaded_info.version == 2
    horizon = pd.Timedelta(hours=24)
    assert (loaded.predict(horizon).p50 == model.predict(horizon).p50).all()
    assert store.selected("meter-1", "power_kw") is None
    store.select("meter-1", "power_kw", "seasonal_daily")
    assert store.selected("meter-1", "power_kw") == "seasonal_daily"
    assert [i.model for i in store.infos("meter-1", "power_kw")] == ["seasonal_daily"]
    with pytest.raises(NotFoundError):
        store.load("meter-1", "power_kw", "gbm")
