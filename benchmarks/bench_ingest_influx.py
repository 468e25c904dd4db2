"""(b) Ingest through the bus into InfluxDB 1.x, against raw line-protocol POSTs with httpx.

A real ``influxd`` is started on a free loopback port by ``tests/integration/influxd.py``. Ours:
the same pre-built records as (a), published in chunks of 1,000 to
``IngestBus(DurableWriter(InfluxStore, Spool).write)``, timed until ``bus.counters.written == N``.
Raw: the same readings as pre-built line-protocol lines (millisecond precision), 5,000 lines per
``POST /write``, as many requests in flight as the store uses, through one httpx client. Each
repetition writes into fresh databases; both are checked to hold every point afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from influxd import InfluxServer

from _bus import ingest_through_bus
from _common import Figure, arg_parser, emit, machine_info, median, progress, repeats
from _data import build_records
from derim.models.telemetry import DERTelemetry
from derim.storage import influx
from derim.storage.influx import InfluxStore
from derim.storage.sqlite import EPOCH, ONE_MS

BENCH = "b_ingest_influx"
CHUNK = 1_000
LINES_PER_POST = 5_000
KEYS = ("device_id", "timestamp")
SKIPPED = 77


def raw_bodies(records: Sequence[DERTelemetry]) -> list[bytes]:
    """The records as line protocol (ms precision), 5,000 lines per body (built before timing)."""
    lines = []
    for record in records:
        values = []
        for name, value in record:
            if name in KEYS or value is None:
                continue
            values.append(f'{name}="{value}"' if isinstance(value, str) else f"{name}={value!r}")
        ts = (record.timestamp - EPOCH) // ONE_MS
        lines.append(f"telemetry,device_id={record.device_id} {','.join(values)} {ts}")
    return [
        "\n".join(lines[i : i + LINES_PER_POST]).encode()
        for i in range(0, len(lines), LINES_PER_POST)
    ]


async def influx_query(http: httpx.AsyncClient, statement: str, database: str = "") -> object:
    """Run one InfluxQL statement and return its ``results``."""
    form = {"q": statement, **({"db": database} if database else {})}
    response = await http.post("/query", data=form)
    response.raise_for_status()
    return response.json()["results"]


async def point_count(url: str, database: str) -> int:
    """How many points (rows) the database's ``telemetry`` measurement holds."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        results = await influx_query(http, "SELECT count(power_kw) FROM telemetry", database)
    series = results[0].get("series") if isinstance(results, list) else None  # type: ignore[union-attr]
    return int(series[0]["values"][0][1]) if series else 0


async def run_raw(url: str, database: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds to POST every body to ``/write`` with ``concurrency`` requests in flight."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await influx_query(http, f'CREATE DATABASE "{database}"')
        params = {"db": database, "precision": "ms"}
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < len(bodies):
                body = bodies[position]
                position += 1
                response = await http.post("/write", params=params, content=body)
                if response.status_code != 204:
                    raise RuntimeError(f"raw write: {response.status_code} {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def run_ours(
    url: str, database: str, spool_dir: Path, chunks: list[list[DERTelemetry]]
) -> float:
    """Seconds to ingest every chunk through the bus into a fresh InfluxDB database."""
    elapsed, _ = await ingest_through_bus(
        InfluxStore(url, database), spool_dir / "spool.db", chunks
    )
    return elapsed


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, help="Seconds of fleet data (300; quick 100).")
    args = parser.parse_args(argv)
    if shutil.which("influxd") is None:
        print("  skipped: influxd is not installed (Debian package influxdb; `make servers`)")
        sys.exit(SKIPPED)
    seconds = args.seconds or (100 if args.quick else 300)
    n_rep = repeats(args)
    concurrency = influx.WRITE_CONCURRENCY
    with progress(f"building {args.devices} devices x {seconds} s of records"):
        records = build_records(args.devices, seconds)
        chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
        bodies = raw_bodies(records)
    total = len(records)
    ours: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="derim-bench-b-") as tmp:
        server = InfluxServer(Path(tmp) / "influxd")
        try:
            with progress("starting influxd"):
                server.start()
            for rep in range(n_rep):
                ours_db, raw_db = f"bench_ours_{rep}", f"bench_raw_{rep}"
                ours_s = asyncio.run(run_ours(server.url, ours_db, Path(tmp), chunks))
                raw_s = asyncio.run(run_raw(server.url, raw_db, bodies, concurrency))
                for database in (ours_db, raw_db):
                    stored = asyncio.run(point_count(server.url, database))
                    if stored != total:
                        raise RuntimeError(f"{database} holds {stored} of {total} points")
                ours.append(total / ours_s)
                raw.append(total / raw_s)
                print(
                    f"  run {rep + 1}/{n_rep}: ours {ours[-1]:,.0f} points/s, "
                    f"raw {raw[-1]:,.0f} points/s",
                    flush=True,
                )
        finally:
            server.stop()
    ours_rate = median(ours)
    figure = Figure(
        bench=BENCH,
        metric="(b) InfluxDB ingest",
        unit="points/s",
        ours=ours_rate,
        baseline=median(raw),
        baseline_label=f"httpx POST /write of pre-built lines, {LINES_PER_POST:,} per POST, "
        f"{concurrency} in flight",
        stat=f"median of {n_rep}",
        target=">= 150,000 points/s",
        met=ours_rate >= 150_000,
        runs=ours,
        baseline_runs=raw,
        note=f"{total:,} records of {args.devices} devices, chunks of {CHUNK}; influxd 1.x local",
    )
    details = {"records": total, "devices": args.devices, "seconds": seconds}
    emit([figure], args, details | {"machine": machine_info()})


if __name__ == "__main__":
    main()
