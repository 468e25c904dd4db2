"""(a) Ingest through the bus into SQLite, against raw ``executemany`` of the same rows.

Ours: pre-built validated records published in chunks of 1,000 (as adapters do) to
``IngestBus(DurableWriter(SQLiteStore, Spool).write)``, timed until ``bus.counters.written == N``;
then ``store.refresh_rollups()`` is timed on its own (rollup maintenance is deferred, so the
sustained figure includes it). Raw: the same rows as pre-built tuples, plain ``INSERT`` through
``executemany`` in transactions of 10,000 into the same ``telemetry`` table, same PRAGMAs.
Each repetition uses a fresh database file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bus import ingest_through_bus
from _common import Figure, arg_parser, emit, machine_info, median, progress, repeats
from _data import build_records
from derim.models.telemetry import DERTelemetry
from derim.storage import sqlite_schema as schema
from derim.storage.sqlite import EPOCH, ONE_MS, SQLiteStore

CHUNK = 1_000
RAW_TRANSACTION = 10_000
RAW_COLUMNS = (
    "power_kw",
    "voltage_v",
    "current_a",
    "frequency_hz",
    "energy_kwh",
    "irradiance_w_m2",
    "energy_import_kwh",
    "power_factor",
    "quality",
)
BENCH = "a_ingest_sqlite"


def raw_rows(records: Sequence[DERTelemetry]) -> list[tuple[Any, ...]]:
    """The records as ``(dev, ts, *RAW_COLUMNS)`` tuples (built before timing)."""
    keys: dict[str, int] = {}
    rows = []
    for record in records:
        dev = keys.setdefault(record.device_id, len(keys) + 1)
        ts = (record.timestamp - EPOCH) // ONE_MS
        values = tuple(getattr(record, name, None) for name in RAW_COLUMNS)
        rows.append((dev, ts, *values))
    return rows


def run_raw(path: Path, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to insert ``rows`` with plain executemany, 10,000 per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        for statement in schema.create_statements():
            conn.execute(statement)
        insert = (
            f"INSERT INTO telemetry (dev, ts, {', '.join(RAW_COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(RAW_COLUMNS) + 2))})"
        )
        started = time.perf_counter()
        for i in range(0, len(rows), RAW_TRANSACTION):
            conn.execute("BEGIN")
            conn.executemany(insert, rows[i : i + RAW_TRANSACTION])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        (count,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        if count != len(rows):
            raise RuntimeError(f"raw baseline stored {count} of {len(rows)} rows")
        return elapsed
    finally:
        conn.close()


async def run_ours(directory: Path, chunks: list[list[DERTelemetry]]) -> tuple[float, float]:
    """Seconds to ingest every chunk through the bus, and seconds of the rollup refresh after."""
    total = sum(len(c) for c in chunks)
    store = SQLiteStore(directory / "derim.db")
    ingest_s, rollup_s = await ingest_through_bus(
        store, directory / "spool.db", chunks, after=store.refresh_rollups
    )
    conn = sqlite3.connect(directory / "derim.db")
    try:
        (count,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    finally:
        conn.close()
    if count != total:
        raise RuntimeError(f"store holds {count} of {total} rows")
    return ingest_s, rollup_s


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument(
        "--seconds", type=int, help="Seconds of fleet data (default 300; quick 100)."
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (100 if args.quick else 300)
    n_rep = repeats(args)
    with progress(f"building {args.devices} devices x {seconds} s of records"):
        records = build_records(args.devices, seconds)
        chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
        rows = raw_rows(records)
    total = len(records)
    ours_ingest: list[float] = []
    ours_rollup: list[float] = []
    raw: list[float] = []
    for rep in range(n_rep):
        with tempfile.TemporaryDirectory(prefix="derim-bench-a-") as tmp:
            ours_path, raw_path = Path(tmp) / "ours", Path(tmp) / "raw"
            ours_path.mkdir()
            raw_path.mkdir()
            ingest_s, rollup_s = asyncio.run(run_ours(ours_path, chunks))
            raw_s = run_raw(raw_path / "raw.db", rows)
        ours_ingest.append(total / ingest_s)
        ours_rollup.append(total / (ingest_s + rollup_s))
        raw.append(total / raw_s)
        print(
            f"  run {rep + 1}/{n_rep}: ours {total / ingest_s:,.0f}/s "
            f"(rollups {rollup_s:.2f} s -> {total / (ingest_s + rollup_s):,.0f}/s), "
            f"raw {total / raw_s:,.0f}/s",
            flush=True,
        )
    stat = f"median of {n_rep}"
    raw_label = "sqlite3 executemany, plain INSERT, 10k rows/txn, WAL + synchronous=NORMAL"
    raw_median = median(raw)
    figures = []
    for metric, runs in (("ingest", ours_ingest), ("ingest incl. rollups", ours_rollup)):
        ours = median(runs)
        figures.append(
            Figure(
                bench=BENCH,
                metric=f"(a) SQLite {metric}",
                unit="records/s",
                ours=ours,
                baseline=raw_median,
                baseline_label=raw_label,
                stat=stat,
                target=">= 100,000 records/s and >= 80% of raw",
                met=ours >= 100_000 and ours >= 0.8 * raw_median,
                runs=runs,
                baseline_runs=raw,
            )
        )
    figures[0].note = f"{total:,} records, {args.devices} devices, chunks of {CHUNK}"
    details = {"records": total, "devices": args.devices, "seconds": seconds}
    emit(figures, args, details | {"machine": machine_info()})


if __name__ == "__main__":
    main()
