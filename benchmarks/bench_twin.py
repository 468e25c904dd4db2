"""(j) The digital twin: day-ahead accuracy on real PV data, LSTM training time, served forecasts.

Accuracy: every forecaster backtested day-ahead (24 h, hourly) on pvlib's Greensboro TMY3 year
turned into a 5 kW system's AC power (``derim.twin.datasets.greensboro_pv``): fitted on the
first four fifths, forecasting from each day start of the last fifth (73 origins). Ours is the
best model's MAE; the baselines are persistence and clear-sky persistence (ratios < 1 are
better). The full table goes to ``--table`` (markdown) for docs/twin.md.

Training: ``LstmForecaster().fit`` on two years of 15-min data (the Greensboro year interpolated
to 15 min and repeated: 70,080 points), wall time including the calibration pass, against
``GradientBoosting().fit`` on the same data in the same run.

Anomalies: faults injected into the same year (``derim.twin.faults``: outages, soiling drift,
stuck values, spikes, gaps; several seeds) and detected by ``derim.twin.anomaly.detect``;
event-level precision and recall.

Serving: ``derim serve`` as its own process with 60 days of 15-min PV readings and trained
models; ``GET /api/v1/forecast/{id}?horizon=24h`` for each model, p50/p99 over repeated
requests, against ``GET /api/v1/telemetry/{id}/latest`` interleaved on the same server.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, arg_parser, derim_server, emit, free_port, machine_info, percentile
from derim.twin.anomaly import detect
from derim.twin.backtest import BacktestResult, backtest
from derim.twin.datasets import PV_CAPACITY_W, greensboro_pv, replay
from derim.twin.faults import evaluate, inject_faults
from derim.twin.features import Covariates
from derim.twin.gbm import GradientBoosting
from derim.twin.lstm import LstmForecaster

BENCH = "twin"
DEVICE = "pv-bench"
SERVED_MODELS = ("clearsky_persistence", "gbm", "ensemble", "lstm")


def accuracy(quick: bool) -> tuple[list[Figure], BacktestResult]:
    """Backtest every model on the Greensboro year; the best model against the two baselines."""
    data = greensboro_pv()
    result = backtest(
        data.series, Covariates(data.freq, data.site), pd.Timedelta(hours=24),
        test_days=30 if quick else None,
    )  # fmt: skip
    overall = {m.model: m for m in result.overall()}
    best = overall[result.best()]
    lstm = overall["lstm"]
    baselines = ("persistence", "seasonal_daily", "seasonal_weekly", "moving_average")
    best_baseline = min(
        (overall[b] for b in (*baselines, "clearsky_persistence")), key=lambda m: m.mae
    )
    stat = f"{result.origins} day-ahead origins"
    persistence = overall["persistence"].mae
    clearsky = overall["clearsky_persistence"].mae
    figures = [
        Figure(BENCH, f"(j) best model ({best.model}) MAE vs persistence", "W", best.mae,
               persistence, "persistence (last value held)", stat,
               target="MAE <= 0.75 x persistence", met=best.mae <= 0.75 * persistence),
        Figure(BENCH, f"(j) best model ({best.model}) MAE vs clear-sky persistence", "W", best.mae,
               clearsky, "clear-sky-index persistence", stat,
               target="MAE < clear-sky persistence", met=best.mae < clearsky),
        Figure(BENCH, "(j) LSTM MAE vs the best baseline", "W", lstm.mae, best_baseline.mae,
               f"best baseline ({best_baseline.model})", stat,
               target="MAE < every baseline", met=lstm.mae < best_baseline.mae),
        Figure(BENCH, f"(j) best model ({best.model}) P10-P90 coverage", "%",
               100 * best.coverage_p10_p90, None, "", stat, target="70-90 %",
               met=0.7 <= best.coverage_p10_p90 <= 0.9),
    ]  # fmt: skip
    return figures, result


def anomalies(seeds: int) -> tuple[list[Figure], str]:
    """Precision and recall of anomaly detection on the Greensboro year with injected faults."""
    data = greensboro_pv()
    found, planted = [], []
    for seed in range(seeds):
        faulty, injected = inject_faults(data.series, freq=data.freq, site=data.site, seed=seed)
        found += detect(faulty, freq=data.freq, site=data.site, capacity=PV_CAPACITY_W * 0.92)
        planted += injected
    clean = detect(data.series, freq=data.freq, site=data.site, capacity=PV_CAPACITY_W * 0.92)
    evaluation = evaluate(found, planted)
    stat = f"{len(planted)} faults injected over {seeds} seeds"
    figures = [
        Figure(BENCH, "(j) anomaly precision (injected faults)", "%",
               100 * evaluation.precision.ratio, None, "", stat),
        Figure(BENCH, "(j) anomaly recall (injected faults)", "%",
               100 * evaluation.recall.ratio, None, "", stat,
               note=f"{len(clean)} flag(s) on the clean year"),
    ]  # fmt: skip
    return figures, evaluation.table()


def two_years_15min() -> tuple[pd.Series, Covariates]:
    """The Greensboro year interpolated to 15 min and repeated twice (70,080 points)."""
    data = greensboro_pv(years=2)
    index = pd.date_range(data.series.index[0], periods=len(data.series) * 4, freq="15min")
    series = data.series.reindex(index).interpolate(limit_area="inside").ffill()
    return series, Covariates(pd.Timedelta(minutes=15), data.site)


def training(runs: int) -> list[Figure]:
    """LSTM fit time on two years of 15-min data, against LightGBM's on the same data."""
    series, covariates = two_years_15min()
    lstm_s, gbm_s = [], []
    for _ in range(runs):
        began = time.perf_counter()
        LstmForecaster().fit(series, covariates)
        lstm_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        GradientBoosting().fit(series, covariates)
        gbm_s.append(time.perf_counter() - began)
        print(f"  fit: lstm {lstm_s[-1]:.1f} s, gbm {gbm_s[-1]:.1f} s", flush=True)
    worst = max(lstm_s)
    return [
        Figure(BENCH, "(j) LSTM training, 2 years of 15-min data", "s", worst, max(gbm_s),
               "LightGBM fit on the same data", f"slowest of {runs}", target="<= 60 s",
               met=worst <= 60, runs=lstm_s, baseline_runs=gbm_s,
               note=f"{len(series):,} points, calibration pass included"),
    ]  # fmt: skip


def pv_readings(days: int) -> list[dict[str, object]]:
    """The last ``days`` days to now of the Greensboro PV output (kW) at 15 min."""
    end = pd.Timestamp.now(tz="UTC").floor("h")
    power = replay(greensboro_pv().series / 1000.0, end, days)
    return [
        {"device_id": DEVICE, "timestamp": t.isoformat(), "power_kw": round(float(v), 4)}
        for t, v in power.items()
    ]


def serving(requests: int) -> list[Figure]:
    """Served forecast latency per model against a latest-reading read on the same server."""
    figures = []
    with (
        tempfile.TemporaryDirectory(prefix="derim-bench-j-") as tmp,
        derim_server(Path(tmp), free_port()) as server,
        httpx.Client(base_url=server.url, timeout=300) as http,
    ):
        http.post("/api/v1/devices", json={
            "id": DEVICE, "device_type": "solar_pv", "rated_power_kw": 4.6,
            "location": {"latitude": 36.1, "longitude": -79.95}}).raise_for_status()  # fmt: skip
        readings = pv_readings(60)
        for k in range(0, len(readings), 5000):
            http.post("/api/v1/telemetry", json=readings[k : k + 5000]).raise_for_status()
        job = http.post(
            f"/api/v1/twin/{DEVICE}/train", json={"models": list(SERVED_MODELS), "days": 60}
        )
        job.raise_for_status()
        while (state := http.get(f"/api/v1/twin/jobs/{job.json()['job_id']}").json())[
            "state"
        ] == "running":
            time.sleep(1)
        if state["state"] != "succeeded":
            raise RuntimeError(f"training failed: {state['error']}")
        for model in SERVED_MODELS:
            url = f"/api/v1/forecast/{DEVICE}?horizon=24h&model={model}"
            http.get(url).raise_for_status()
            ours, raw = [], []
            for _ in range(requests):
                began = time.perf_counter()
                http.get(url).raise_for_status()
                ours.append(1000 * (time.perf_counter() - began))
                began = time.perf_counter()
                http.get(f"/api/v1/telemetry/{DEVICE}/latest").raise_for_status()
                raw.append(1000 * (time.perf_counter() - began))
            p99 = percentile(ours, 99)
            print(f"  {model}: p50 {percentile(ours, 50):.1f} ms, p99 {p99:.1f} ms", flush=True)
            figures.append(
                Figure(BENCH, f"(j) served 24-h forecast p99, {model}", "ms", p99,
                       percentile(raw, 99), "GET /telemetry/{id}/latest, same server",
                       f"p99 of {requests}", target="<= 50 ms", met=p99 <= 50,
                       note=f"p50 {percentile(ours, 50):.1f} ms; 96 steps of 15 min"),
            )  # fmt: skip
    return figures


def markdown(result: BacktestResult) -> str:
    """The all-leads backtest table as markdown."""
    lines = [
        "| model | MAE (W) | RMSE (W) | nMAE | skill vs persistence "
        "| skill vs clear-sky persistence | P10-P90 coverage |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(result.overall(), key=lambda m: m.mae):
        skills = [
            f"{s:+.1%}" if s is not None else "-"
            for s in (m.skill_vs_persistence, m.skill_vs_clearsky)
        ]
        lines.append(
            f"| {m.model} | {m.mae:.0f} | {m.rmse:.0f} | {m.nmae:.3f} | {skills[0]} | {skills[1]} "
            f"| {m.coverage_p10_p90:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--table", type=Path, help="Write the backtest table (markdown) here.")
    args = parser.parse_args(argv)
    figures, result = accuracy(args.quick)
    print(markdown(result), flush=True)
    anomaly_figures, anomaly_table = anomalies(3 if args.quick else 10)
    print(anomaly_table, flush=True)
    if args.table:
        args.table.write_text(markdown(result) + "\n\n" + anomaly_table + "\n")
    figures += anomaly_figures
    figures += training(1 if args.quick else 2)
    figures += serving(50 if args.quick else 200)
    emit(figures, args, {"origins": result.origins, "machine": machine_info()})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
