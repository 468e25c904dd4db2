"""(c) ``POST /api/v1/telemetry`` over real HTTP, against a minimal uvicorn app doing nothing.

Ours: ``derim serve`` as its own process (SQLite in a temp dir, log level WARNING), the fleet
registered through ``POST /api/v1/devices`` first. Raw: ``raw_asgi_app.py`` (uvicorn, reads the
body, answers 202) as its own process. Both are driven by the same client code, asyncio tasks
over keep-alive connections, with pre-serialised bodies: 1,000-record bodies (one instant of a
1,000-device fleet), and one record per request at a few concurrency levels (the best level is
reported). The client is httpx; one record per request is also driven by a minimal asyncio
HTTP/1.1 client, because httpx itself tops out near the target on this machine. Every run sends
new readings (disjoint time windows), so ours really stores each one.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Figure,
    ServerProcess,
    arg_parser,
    derim_server,
    emit,
    free_port,
    machine_info,
    median,
    progress,
    raw_server,
    repeats,
)
from _data import json_reading, readings
from _http import client, lite_post_all, post_all, register_devices, serialise, warm_up

BENCH = "c_http_ingest"
DEVICES = 1_000
INGEST_PATH = "/api/v1/telemetry"
CLIENT_LABELS = {"httpx": "httpx client", "lite": "minimal asyncio client"}


@dataclass
class Scenario:
    """One request shape: records per body, how many records a run sends, concurrency levels."""

    name: str
    per_body: int
    records: int
    levels: list[int]
    target_rate: float
    clients: tuple[str, ...]


class TickClock:
    """Hands out disjoint windows of fleet ticks so no two runs write the same instants."""

    def __init__(self) -> None:
        self.next_tick = 0

    def bodies(self, scenario: Scenario) -> list[bytes]:
        """Fresh pre-serialised bodies for one run of ``scenario``."""
        ticks = -(-scenario.records // DEVICES)
        found = [json_reading(r) for r in readings(DEVICES, ticks, self.next_tick)]
        self.next_tick += ticks
        return serialise(found[: scenario.records], scenario.per_body)


async def timed_run(
    server: ServerProcess, bodies: list[bytes], concurrency: int, kind: str
) -> float:
    """Seconds to POST every body to the server's ingest endpoint with client ``kind``."""
    if kind == "lite":
        return await lite_post_all(server.port, INGEST_PATH, bodies, concurrency)
    async with client(concurrency) as http:
        await warm_up(http, server.url, concurrency)
        return await post_all(http, server.url + INGEST_PATH, bodies, concurrency)


def case_name(scenario: Scenario, kind: str) -> str:
    """The label of one scenario driven by one client."""
    return scenario.name if kind == "httpx" else f"{scenario.name} ({kind} client)"


def ingest_counters(base_url: str) -> dict[str, int]:
    """The server's ingest counters from ``/health``."""
    counters: dict[str, int] = httpx.get(base_url + "/health", timeout=30).json()["ingest"]
    return counters


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    args = parser.parse_args(argv)
    n_rep = repeats(args, quick=3, full=3)
    quick = args.quick
    scenarios = [
        Scenario(
            "1,000-record bodies",
            1_000,
            100_000 if quick else 300_000,
            [2, 4],
            100_000,
            ("httpx",),
        ),
        Scenario(
            "1 record per request",
            1,
            3_000 if quick else 10_000,
            [8, 32] if quick else [8, 16, 32],
            2_500,
            ("httpx", "lite"),
        ),
    ]
    clock = TickClock()
    sent = 0
    results: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
    cases = [(sc, kind) for sc in scenarios for kind in sc.clients]
    with tempfile.TemporaryDirectory(prefix="derim-bench-c-") as tmp:
        root = Path(tmp)
        with (
            derim_server(root, free_port()) as ours,
            raw_server(root, free_port()) as raw,
        ):
            with progress(f"registering {DEVICES} devices"):
                asyncio.run(register_devices(ours.url, DEVICES))
            for scenario, kind in cases:
                per_level = results.setdefault(case_name(scenario, kind), {})
                for level in scenario.levels:
                    ours_runs, raw_runs = per_level.setdefault(level, ([], []))
                    for rep in range(n_rep):
                        bodies = clock.bodies(scenario)
                        ours_s = asyncio.run(timed_run(ours, bodies, level, kind))
                        raw_s = asyncio.run(timed_run(raw, bodies, level, kind))
                        sent += scenario.records
                        ours_runs.append(scenario.records / ours_s)
                        raw_runs.append(scenario.records / raw_s)
                        print(
                            f"  {case_name(scenario, kind)}, {level} concurrent, run "
                            f"{rep + 1}/{n_rep}: ours {ours_runs[-1]:,.0f} rec/s, "
                            f"raw {raw_runs[-1]:,.0f} rec/s",
                            flush=True,
                        )
            counters = ingest_counters(ours.url)
    if counters["written"] != sent or counters["dropped"] or counters["spooled"]:
        raise RuntimeError(f"server counters {counters} after sending {sent} records")
    figures = []
    for scenario, kind in cases:
        per_level = results[case_name(scenario, kind)]
        best = max(per_level, key=lambda level: median(per_level[level][0]))
        ours_runs, raw_runs = per_level[best]
        ours_rate = median(ours_runs)
        others = ", ".join(
            f"{lvl}: {median(o):,.0f} vs raw {median(r):,.0f}"
            for lvl, (o, r) in sorted(per_level.items())
        )
        figures.append(
            Figure(
                bench=BENCH,
                metric=f"(c) HTTP ingest, {case_name(scenario, kind)}",
                unit="records/s",
                ours=ours_rate,
                baseline=median(raw_runs),
                baseline_label=f"minimal uvicorn ASGI app answering 202, same {CLIENT_LABELS[kind]}"
                f", {best} concurrent",
                stat=f"median of {n_rep} at the best concurrency ({best})",
                target=f">= {scenario.target_rate:,.0f} records/s",
                met=ours_rate >= scenario.target_rate,
                runs=ours_runs,
                baseline_runs=raw_runs,
                note=f"by concurrency: {others}",
            )
        )
    details = {
        "devices": DEVICES,
        "by_level": {
            name: {str(lvl): {"ours": o, "raw": r} for lvl, (o, r) in levels.items()}
            for name, levels in results.items()
        },
        "server_counters": counters,
        "machine": machine_info(),
    }
    emit(figures, args, details)


if __name__ == "__main__":
    main()
