"""(e) Server memory under sustained ingest: is the peak RSS flat?

``derim serve`` (SQLite in a temp dir) takes 1,000-record bodies over HTTP at a steady paced rate
(``--rate``, default 15,000 records/s, about 60% of the maximum that (c) measures) for
``--duration`` seconds (default 600; ``--quick`` 60) from a client process (this one); its VmRSS
is read from ``/proc/<pid>/status`` every 5 s. Reported: RSS at start (fleet registered, before
ingest), after warm-up (20% of the run, at least 20 s), at the end, the peak (VmHWM), and the
least-squares slope after warm-up in MB/min. "Flat" means a slope of at most 1 MB/min; runs
shorter than 300 s (``--quick``) are reported but not judged, the page cache still fills then.
Baseline: the minimal uvicorn app (``raw_asgi_app.py``) fed by the same client and pacing for
``min(duration, 120 s)``, sampled the same way.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Figure,
    ServerProcess,
    arg_parser,
    derim_server,
    emit,
    free_port,
    machine_info,
    progress,
    raw_server,
    rss_mb,
)
from _data import BASE_TIME, json_reading, readings
from _http import client, register_devices

BENCH = "e_rss"
DEVICES = 1_000
SAMPLE_EVERY_S = 5.0
CONCURRENCY = 2
FLAT_MB_PER_MIN = 1.0
MIN_JUDGED_S = 300.0
"""Shorter runs end while SQLite's page cache is still filling: their slope is not judged."""
TS_MARK = b"2000-01-01T00:00:00Z"


@dataclass
class RssRun:
    """Samples ``(seconds since start, VmRSS MB)`` of one server, plus what was sent."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    start_mb: float = 0.0
    peak_mb: float = 0.0
    records: int = 0
    elapsed_s: float = 0.0

    def at(self, t: float) -> float:
        """RSS of the first sample at or after ``t`` seconds."""
        for when, value in self.samples:
            if when >= t:
                return value
        return self.samples[-1][1]

    def slope(self, after_s: float) -> float:
        """Least-squares slope of RSS after ``after_s`` seconds, MB per minute."""
        points = [(t, v) for t, v in self.samples if t >= after_s]
        if len(points) < 2:
            return 0.0
        mean_t = sum(t for t, _ in points) / len(points)
        mean_v = sum(v for _, v in points) / len(points)
        num = sum((t - mean_t) * (v - mean_v) for t, v in points)
        den = sum((t - mean_t) ** 2 for t, _ in points)
        return 60 * num / den if den else 0.0


def body_template() -> bytes:
    """One instant of the fleet as a JSON body whose timestamp is ``TS_MARK`` everywhere."""
    found = [json_reading(r) | {"timestamp": TS_MARK.decode()} for r in readings(DEVICES, 1)]
    return orjson.dumps(found)


async def drive(server: ServerProcess, duration_s: float, rate: float) -> RssRun:
    """Send paced bodies for ``duration_s`` while sampling the server's RSS every 5 s."""
    template = body_template()
    run = RssRun()
    run.start_mb, _ = rss_mb(server.pid)
    interval = DEVICES / rate
    next_index = 0
    started = time.monotonic()
    stop_at = started + duration_s

    async def sender(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while True:
            index = next_index
            next_index += 1
            due = started + index * interval
            if due >= stop_at:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            stamp = (BASE_TIME + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = template.replace(TS_MARK, stamp.encode())
            response = await http.post(server.url + "/api/v1/telemetry", content=body)
            if response.status_code != 202:
                raise RuntimeError(f"ingest: {response.status_code} {response.text[:300]}")
            run.records += DEVICES

    async def sampler() -> None:
        for n in range(int(duration_s / SAMPLE_EVERY_S) + 2):
            await asyncio.sleep(max(0.0, started + n * SAMPLE_EVERY_S - time.monotonic()))
            current, peak = rss_mb(server.pid)
            run.samples.append((time.monotonic() - started, current))
            run.peak_mb = max(run.peak_mb, peak)
            if n % 12 == 0:
                print(f"    t={run.samples[-1][0]:5.0f} s  RSS {current:7.1f} MB", flush=True)
            if time.monotonic() >= stop_at:
                return

    async with client(CONCURRENCY) as http:
        await asyncio.gather(sampler(), *(sender(http) for _ in range(CONCURRENCY)))
    run.elapsed_s = time.monotonic() - started
    return run


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--duration", type=float, help="Seconds of ingest (600; quick 60).")
    parser.add_argument("--rate", type=float, default=15_000, help="Target records/s.")
    args = parser.parse_args(argv)
    duration = args.duration or (60.0 if args.quick else 600.0)
    duration = max(20.0, min(duration, 7_200.0))
    warm_up = max(20.0, 0.2 * duration)
    baseline_duration = min(duration, 120.0)
    with tempfile.TemporaryDirectory(prefix="derim-bench-e-") as tmp:
        root = Path(tmp)
        with derim_server(root, free_port()) as server:
            with progress(f"registering {DEVICES} devices"):
                asyncio.run(register_devices(server.url, DEVICES))
            with progress(f"ours: {duration:.0f} s at {args.rate:,.0f} records/s"):
                ours = asyncio.run(drive(server, duration, args.rate))
            counters = httpx.get(server.url + "/health", timeout=30).json()["ingest"]
        with (
            raw_server(root, free_port()) as raw_srv,
            progress(f"raw baseline: {baseline_duration:.0f} s"),
        ):
            raw = asyncio.run(drive(raw_srv, baseline_duration, args.rate))
    if counters["written"] != ours.records or counters["dropped"] or counters["spooled"]:
        raise RuntimeError(f"server counters {counters} after sending {ours.records} records")
    raw_warm = max(20.0, 0.2 * baseline_duration)
    slope = ours.slope(warm_up)
    end_mb = ours.samples[-1][1]
    summary = (
        f"start {ours.start_mb:.1f} MB, after warm-up ({warm_up:.0f} s) {ours.at(warm_up):.1f} MB,"
        f" end {end_mb:.1f} MB, peak {ours.peak_mb:.1f} MB; "
        f"{ours.records / ours.elapsed_s:,.0f} records/s achieved"
    )
    raw_summary = (
        f"raw: start {raw.start_mb:.1f} MB, end {raw.samples[-1][1]:.1f} MB, "
        f"slope {raw.slope(raw_warm):+.2f} MB/min over {baseline_duration:.0f} s"
    )
    print(f"  ours: {summary}\n  {raw_summary}")
    figures = [
        Figure(
            bench=BENCH,
            metric="(e) RSS slope after warm-up",
            unit="MB/min",
            ours=slope,
            baseline=raw.slope(raw_warm),
            baseline_label=f"minimal uvicorn app, same client, {baseline_duration:.0f} s",
            stat=f"least squares over {SAMPLE_EVERY_S:.0f}-s samples, {duration:.0f} s run",
            target=f"flat: slope <= {FLAT_MB_PER_MIN:g} MB/min",
            met=slope <= FLAT_MB_PER_MIN if duration >= MIN_JUDGED_S else None,
            note=summary
            + ("" if duration >= MIN_JUDGED_S else f"; not judged: runs < {MIN_JUDGED_S:.0f} s"),
            no_ratio=True,
        ),
        Figure(
            bench=BENCH,
            metric="(e) peak RSS (VmHWM)",
            unit="MB",
            ours=ours.peak_mb,
            baseline=raw.peak_mb,
            baseline_label="minimal uvicorn app, same client and pacing",
            stat=f"one {duration:.0f} s run",
            note=raw_summary,
        ),
    ]
    details = {
        "duration_s": duration,
        "warm_up_s": warm_up,
        "rate_target": args.rate,
        "rate_achieved": round(ours.records / ours.elapsed_s),
        "ours_samples": [[round(t), round(v, 1)] for t, v in ours.samples],
        "raw_samples": [[round(t), round(v, 1)] for t, v in raw.samples],
        "server_counters": counters,
        "machine": machine_info(),
    }
    emit(figures, args, details)


if __name__ == "__main__":
    main()
