"""(d) Query latency over HTTP with a year of 1-s data (31.5 M rows) in SQLite.

The database is built once and cached under ``benchmarks/.cache/`` (keyed by the schema): one
meter with 2023 at 1-s resolution (power_kw, voltage_v, frequency_hz, energy_kwh), written in the
store's own row layout (the first reading goes through ``SQLiteStore.write`` so the ``series``
row is the store's; the rest is bulk-inserted by SQL), one ``rollup_dirty`` row per day, then the
tiers built by ``SQLiteStore.refresh_rollups()`` (that build time is reported).

Ours: ``derim serve`` pointed at that file; p50/p95 of ``GET /api/v1/telemetry/{id}`` for a
1-day window of raw data (86,400 rows, ``limit=100000``, JSON) over random days, and of a 15-min
downsample over the whole year (``every=15m``, 35,040 rows). Raw: in-process ``sqlite3``
``SELECT ts, fields ... WHERE dev = ? AND ts >= ? AND ts < ?`` + ``fetchall()`` of the same day,
and a raw ``GROUP BY`` 15-min scan of the raw rows (the whole year in a full run, one month
times 12 in a quick run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CACHE_DIR,
    Figure,
    arg_parser,
    derim_server,
    emit,
    free_port,
    machine_info,
    median,
    percentile,
    progress,
)
from derim.models.telemetry import MeterTelemetry
from derim.storage import sqlite_schema as schema
from derim.storage.sqlite import SQLiteStore

BENCH = "d_query"
DEVICE = "meter-year-1"
YEAR_START = datetime(2023, 1, 1, tzinfo=UTC)
DAYS = 365
DAY_MS = 86_400_000
FIELDS = ("power_kw", "voltage_v", "frequency_hz", "energy_kwh")
MIN_FREE_BYTES = 8 * 1024**3
QUERY_TIMEOUT_S = 120.0
BUILD_VERSION = 1

INSERT_DAY = """
WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2)
INSERT INTO telemetry (dev, ts, power_kw, voltage_v, frequency_hz, energy_kwh, quality)
SELECT ?3, i * 1000,
  round(3.0 - 2.5 * cos(6.283185307 * (i % 86400) / 86400.0) + (random() % 1000) / 2000.0, 3),
  round(230.0 + (random() % 4000) / 1000.0, 3),
  round(50.0 + (random() % 50) / 1000.0, 3),
  round(10000.0 + (i - ?4) * 0.000833, 3),
  'good'
FROM s
"""
"""One day of 1-s rows: seconds ``?1..?2``, device key ``?3``, year start (s) ``?4``."""


def cache_path() -> Path:
    """The cached database, named after the schema it was built with."""
    digest = hashlib.sha256("\n".join(schema.create_statements()).encode()).hexdigest()[:12]
    return CACHE_DIR / f"year_1s_v{BUILD_VERSION}_{digest}.db"


def epoch_s(at: datetime) -> int:
    """Whole seconds since the epoch."""
    return int(at.timestamp())


async def _first_reading(path: Path) -> int:
    """Write the year's first reading through the store; returns the device key."""
    store = SQLiteStore(path)
    await store.open()
    try:
        values = {"power_kw": 0.5, "voltage_v": 230.0, "frequency_hz": 50.0, "energy_kwh": 10000.0}
        await store.write([MeterTelemetry(device_id=DEVICE, timestamp=YEAR_START, **values)])
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        (dev,) = conn.execute("SELECT dev FROM series WHERE device_id = ?", (DEVICE,)).fetchone()
    finally:
        conn.close()
    return int(dev)


async def _refresh(path: Path) -> float:
    """Seconds ``SQLiteStore.refresh_rollups()`` takes to build every tier."""
    store = SQLiteStore(path)
    await store.open()
    try:
        started = time.perf_counter()
        await store.refresh_rollups()
        return time.perf_counter() - started
    finally:
        await store.close()


def build_database(path: Path) -> dict[str, float]:
    """Generate the year into ``path`` (via a temporary name) and build the rollup tiers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < MIN_FREE_BYTES:
        raise RuntimeError(f"only {free / 1e9:.1f} GB free under {path.parent}; need 8 GB")
    partial = path.with_suffix(".partial")
    for stale in path.parent.glob(path.stem + ".partial*"):
        stale.unlink()
    dev = asyncio.run(_first_reading(partial))
    conn = sqlite3.connect(partial, isolation_level=None)
    started = time.perf_counter()
    year0 = epoch_s(YEAR_START)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        for day in range(DAYS):
            first = year0 + day * 86_400
            conn.execute("BEGIN")
            conn.execute(INSERT_DAY, (first + (1 if day == 0 else 0), first + 86_399, dev, year0))
            lo, hi = first * 1000, (first + 86_399) * 1000
            conn.execute(
                "INSERT OR REPLACE INTO rollup_dirty (dev, day, lo, hi) VALUES (?, ?, ?, ?)",
                (dev, lo // DAY_MS, lo, hi),
            )
            conn.execute("COMMIT")
            if (day + 1) % 30 == 0 or day + 1 == DAYS:
                rate = (day + 1) * 86_400 / (time.perf_counter() - started)
                print(f"    {day + 1}/{DAYS} days generated ({rate:,.0f} rows/s)", flush=True)
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    generate_s = time.perf_counter() - started
    print("    building rollup tiers with SQLiteStore.refresh_rollups() ...", flush=True)
    rollup_s = asyncio.run(_refresh(partial))
    partial.rename(path)
    return {
        "generate_s": round(generate_s, 1),
        "rollup_build_s": round(rollup_s, 1),
        "file_gb": round(path.stat().st_size / 1e9, 2),
    }


def ensure_database() -> tuple[Path, dict[str, object]]:
    """The cached database and its build report, building both when missing."""
    path = cache_path()
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info: dict[str, object] = json.loads(info_path.read_text())
        info["from_cache"] = True
        return path, info
    with progress(f"building {path.name} ({DAYS * 86_400:,} rows, a few minutes)"):
        built = build_database(path)
    conn = sqlite3.connect(path)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    finally:
        conn.close()
    info = {**built, "rows": rows, "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    info_path.write_text(json.dumps(info, indent=1))
    info["from_cache"] = False
    return path, info


def iso(at: datetime) -> str:
    """ISO 8601 UTC with a Z."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def day_url(base: str, day: int) -> str:
    """The 1-day raw query of day ``day`` of the year."""
    start = YEAR_START + timedelta(days=day)
    end = start + timedelta(days=1)
    return f"{base}/api/v1/telemetry/{DEVICE}?start={iso(start)}&end={iso(end)}&limit=100000"


def year_url(base: str) -> str:
    """The whole-year 15-min downsample."""
    end = YEAR_START + timedelta(days=DAYS)
    return (
        f"{base}/api/v1/telemetry/{DEVICE}?start={iso(YEAR_START)}&end={iso(end)}"
        "&every=15m&limit=100000"
    )


def timed_get(http: httpx.Client, url: str, expect_count: int | None = None) -> float:
    """Milliseconds to GET ``url`` and read the whole body (optionally checking the count)."""
    started = time.perf_counter()
    response = http.get(url)
    body = response.content
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {body[:300]!r}")
    if expect_count is not None:
        count = json.loads(body)["count"]
        if count != expect_count:
            raise RuntimeError(f"GET {url}: {count} rows, expected {expect_count}")
    return elapsed


def raw_day_ms(conn: sqlite3.Connection, dev: int, day: int) -> float:
    """Milliseconds of a plain SELECT + fetchall of one day of raw rows."""
    lo = epoch_s(YEAR_START) * 1000 + day * DAY_MS
    started = time.perf_counter()
    rows = conn.execute(
        f"SELECT ts, {', '.join(FIELDS)} FROM telemetry WHERE dev = ? AND ts >= ? AND ts < ?",
        (dev, lo, lo + DAY_MS),
    ).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    if len(rows) != 86_400:
        raise RuntimeError(f"raw day {day}: {len(rows)} rows")
    return elapsed


def raw_group_ms(conn: sqlite3.Connection, dev: int, days: int) -> float:
    """Milliseconds of a raw 15-min GROUP BY scan over the first ``days`` days of raw rows."""
    lo = epoch_s(YEAR_START) * 1000
    avgs = ", ".join(f"avg({f})" for f in FIELDS)
    started = time.perf_counter()
    rows = conn.execute(
        f"SELECT ts / 900000 AS b, {avgs} FROM telemetry WHERE dev = ? AND ts >= ? AND ts < ? "
        "GROUP BY b",
        (dev, lo, lo + days * DAY_MS),
    ).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    if len(rows) != days * 96:
        raise RuntimeError(f"raw group-by over {days} days: {len(rows)} buckets")
    return elapsed


def register(base: str) -> None:
    """Register the device (409 when an earlier run already did is fine)."""
    response = httpx.post(
        base + "/api/v1/devices",
        json={"id": DEVICE, "device_type": "meter", "rated_power_kw": 10.0},
        timeout=30,
    )
    if response.status_code not in (201, 409):
        raise RuntimeError(f"register: {response.status_code} {response.text}")


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--days", type=int, default=30, help="Random days per pass.")
    args = parser.parse_args(argv)
    passes = args.repeats or (1 if args.quick else 3)
    year_queries = 5 if args.quick else 15
    group_days = 30 if args.quick else DAYS
    path, info = ensure_database()
    print(f"  database {path.name}: {info}", flush=True)
    raw_conn = sqlite3.connect(path)
    raw_conn.execute("PRAGMA query_only=1")
    raw_conn.execute("PRAGMA cache_size=-65536")
    (dev,) = raw_conn.execute("SELECT dev FROM series WHERE device_id = ?", (DEVICE,)).fetchone()
    day_p50: list[float] = []
    day_p95: list[float] = []
    raw_p50: list[float] = []
    raw_p95: list[float] = []
    year_ms: list[float] = []
    group_ms: list[float] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="derim-bench-d-") as tmp,
            derim_server(Path(tmp), free_port(), sqlite_path=str(path)) as server,
            httpx.Client(timeout=QUERY_TIMEOUT_S) as http,
        ):
            register(server.url)
            timed_get(http, day_url(server.url, 0), expect_count=86_400)
            timed_get(http, year_url(server.url), expect_count=DAYS * 96)
            for n in range(passes):
                days = random.Random(n).sample(range(DAYS), min(args.days, DAYS))
                ours_day, raw_day = [], []
                for day in days:
                    ours_day.append(timed_get(http, day_url(server.url, day)))
                    raw_day.append(raw_day_ms(raw_conn, dev, day))
                day_p50.append(percentile(ours_day, 50))
                day_p95.append(percentile(ours_day, 95))
                raw_p50.append(percentile(raw_day, 50))
                raw_p95.append(percentile(raw_day, 95))
                print(
                    f"  pass {n + 1}/{passes}, {len(days)} days: ours p50 {day_p50[-1]:.0f} ms "
                    f"p95 {day_p95[-1]:.0f} ms; raw p50 {raw_p50[-1]:.0f} ms "
                    f"p95 {raw_p95[-1]:.0f} ms",
                    flush=True,
                )
            for _ in range(year_queries):
                year_ms.append(timed_get(http, year_url(server.url)))
            print(f"  year 15-min downsample: {[round(v) for v in year_ms]} ms", flush=True)
            for _ in range(passes):
                group_ms.append(raw_group_ms(raw_conn, dev, group_days) * DAYS / group_days)
            print(f"  raw GROUP BY (year): {[round(v) for v in group_ms]} ms", flush=True)
    finally:
        raw_conn.close()
    scope = "whole year" if group_days == DAYS else f"{group_days} days x {DAYS / group_days:.1f}"
    stat = f"median over {passes} pass(es) of {args.days} random days"
    figures = [
        Figure(
            bench=BENCH,
            metric="(d) 1-day raw query p50",
            unit="ms",
            ours=median(day_p50),
            baseline=median(raw_p50),
            baseline_label="in-process sqlite3 SELECT + fetchall of the same day",
            stat=stat,
            runs=day_p50,
            baseline_runs=raw_p50,
            note="86,400 rows as JSON over HTTP",
        ),
        Figure(
            bench=BENCH,
            metric="(d) 1-day raw query p95",
            unit="ms",
            ours=median(day_p95),
            baseline=median(raw_p95),
            baseline_label="in-process sqlite3 SELECT + fetchall of the same day",
            stat=stat,
            target="p95 <= 150 ms",
            met=median(day_p95) <= 150,
            runs=day_p95,
            baseline_runs=raw_p95,
        ),
        Figure(
            bench=BENCH,
            metric="(d) year 15-min downsample p50",
            unit="ms",
            ours=percentile(year_ms, 50),
            baseline=median(group_ms),
            baseline_label=f"raw GROUP BY over the raw rows ({scope})",
            stat=f"{year_queries} queries",
            runs=year_ms,
            baseline_runs=group_ms,
            note="35,040 rows from the 15-min tier",
        ),
        Figure(
            bench=BENCH,
            metric="(d) year 15-min downsample p95",
            unit="ms",
            ours=percentile(year_ms, 95),
            baseline=median(group_ms),
            baseline_label=f"raw GROUP BY over the raw rows ({scope})",
            stat=f"{year_queries} queries",
            target="p95 <= 300 ms",
            met=percentile(year_ms, 95) <= 300,
            runs=year_ms,
            baseline_runs=group_ms,
        ),
    ]
    emit(figures, args, {"database": info, "machine": machine_info()})


if __name__ == "__main__":
    main()
