"""(l) Edge profile: idle memory and time to serving with 100 devices configured.

The server is started the way the container starts it, ``python deploy/entrypoint.py --config
<edge.yaml>``, with the settings of ``examples/edge.yaml`` (SQLite, retention on, no twin scans)
and its device list replaced by 100 SunSpec PV inverters (common model 1, inverter model 103)
served by ``_sunspec_farm.py`` on loopback, 50 units per TCP port, polled every 5 s.

Measured per run: the time from ``Popen`` to the first ``GET /health`` answered 200 (polled every
20 ms), and the idle RSS: VmRSS from ``/proc/<pid>/status`` sampled every second over the last
10 s of a steady period (``--steady``, default 30 s; quick 15 s) after serving, median of those
samples, with the devices being polled and no API traffic. The runs also check that the devices
delivered readings and list which heavy libraries with native code (torch, NumPy, pandas, SciPy,
LightGBM) the server has mapped (pure-Python pvlib does not show there). Baseline, interleaved
in the same run: the minimal uvicorn app (``raw_asgi_app.py``), same measurements. Targets
(issue 10): <= 120 MB RSS, <= 2 s to serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    ROOT,
    Figure,
    ServerProcess,
    arg_parser,
    child_env,
    emit,
    free_port,
    machine_info,
    median,
    progress,
    raw_server,
    repeats,
    rss_mb,
)

BENCH = "l_edge"
DEVICES = 100
PER_GATEWAY = 50
POLL_INTERVAL_S = 5.0
SAMPLE_WINDOW_S = 10.0
READY_POLL_S = 0.02
RSS_TARGET_MB = 120.0
START_TARGET_S = 2.0
HEAVY_LIBRARIES = ("torch", "numpy", "pandas", "scipy", "lightgbm")
EDGE_CONFIG = ROOT / "examples" / "edge.yaml"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.py"


@dataclass
class Run:
    """One start of one server: seconds to serving, idle RSS (MB) and what it had loaded."""

    start_s: float
    start_cpu_s: float
    """CPU time (user + system) the process had used when it first answered: unlike the wall
    time, not stretched by other load on the machine."""
    rss_mb: float
    peak_mb: float
    heavy: list[str]
    readings: int = 0
    devices_stored: int = 0


def start_farm() -> tuple[subprocess.Popen[bytes], list[int]]:
    """The simulated inverters in their own process, and their gateway ports."""
    farm = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_sunspec_farm.py"), "--devices", str(DEVICES),
         "--per-gateway", str(PER_GATEWAY)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert farm.stdout is not None
    ports: list[int] = json.loads(farm.stdout.readline())["gateways"]
    return farm, ports


def inverter(port: int, unit: int) -> dict[str, object]:
    """One farm inverter as a device entry of the settings file."""
    connection = {"protocol": "sunspec", "host": "127.0.0.1", "port": port, "unit_id": unit}
    return {
        "id": f"pv-{port}-{unit}",
        "device_type": "solar_pv",
        "rated_power_kw": 10.0,
        "connection": connection | {"poll_interval_s": POLL_INTERVAL_S},
    }


def edge_config(path: Path, data_dir: Path, gateways: list[int]) -> None:
    """examples/edge.yaml with its data in ``data_dir`` and the farm's inverters as devices."""
    config = yaml.safe_load(EDGE_CONFIG.read_text())
    config["data_dir"] = str(data_dir)
    config["devices"] = [
        inverter(port, unit)
        for index, port in enumerate(gateways)
        for unit in range(1, min(PER_GATEWAY, DEVICES - index * PER_GATEWAY) + 1)
    ]
    assert len(config["devices"]) == DEVICES
    path.write_text(yaml.safe_dump(config))


def edge_server(root: Path, gateways: list[int]) -> ServerProcess:
    """The start-up script on a free loopback port with the edge settings."""
    data_dir = root / "data"
    data_dir.mkdir()
    config = root / "edge.yaml"
    edge_config(config, data_dir, gateways)
    port = free_port()
    env = child_env(DERIM_HOST="127.0.0.1", DERIM_PORT=str(port), DERIM_OCPP_PORT="0")
    return ServerProcess(
        [sys.executable, str(ENTRYPOINT), "--config", str(config)],
        port=port,
        env=env,
        log_path=root / "server.log",
        ready_path="/health",
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (s), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def heavy_libraries(pid: int) -> list[str]:
    """Which of the heavy libraries have a file mapped into the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in HEAVY_LIBRARIES if f"/site-packages/{name}" in maps]


def measure(server: ServerProcess, steady_s: float) -> Run:
    """Start ``server``, time it to serving, wait ``steady_s`` and sample its idle RSS."""
    with server.log_path.open("ab") as log:
        started = time.perf_counter()
        server.process = subprocess.Popen(
            server.argv, env=server.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/health", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.perf_counter() - started > 60:
            raise RuntimeError(f"server not ready after 60 s:\n{server.log_tail()}")
        time.sleep(READY_POLL_S)
    start_s = time.perf_counter() - started
    start_cpu_s = cpu_seconds(server.pid)
    time.sleep(max(0.0, steady_s - SAMPLE_WINDOW_S))
    samples = []
    for _ in range(int(SAMPLE_WINDOW_S)):
        samples.append(rss_mb(server.pid)[0])
        time.sleep(1.0)
    _, peak = rss_mb(server.pid)
    return Run(start_s, start_cpu_s, median(samples), peak, heavy_libraries(server.pid))


def devices_stored(database: Path) -> int:
    """Devices with readings in the (stopped) server's SQLite database."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM series").fetchone()
    return int(count)


def readings_received(server: ServerProcess) -> int:
    """Readings the server has taken in, from its /health counters."""
    received: int = httpx.get(server.url + "/health", timeout=10).json()["ingest"]["received"]
    return received


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--steady", type=float, help="Seconds after serving before sampling.")
    args = parser.parse_args(argv)
    steady = max(SAMPLE_WINDOW_S + 1, args.steady or (15.0 if args.quick else 30.0))
    count = repeats(args, quick=2, full=5)
    ours: list[Run] = []
    raw: list[Run] = []
    farm, gateways = start_farm()
    try:
        for n in range(count):
            with tempfile.TemporaryDirectory(prefix="derim-bench-l-") as tmp:
                root = Path(tmp)
                server = edge_server(root, gateways)
                with progress(f"run {n + 1}/{count}: edge profile, {DEVICES} devices"):
                    try:
                        run = measure(server, steady)
                        run.readings = readings_received(server)
                    finally:
                        server.stop()
                run.devices_stored = devices_stored(root / "data" / "derim.db")
                ours.append(run)
                print(f"    ours: {run}", flush=True)
                baseline = raw_server(root, free_port())
                with progress(f"run {n + 1}/{count}: raw baseline"):
                    try:
                        raw.append(measure(baseline, steady))
                    finally:
                        baseline.stop()
                print(f"    raw: {raw[-1]}", flush=True)
    finally:
        assert farm.stdin is not None
        farm.stdin.close()
        farm.wait(timeout=30)
    for run in ours:
        if run.devices_stored != DEVICES:
            raise RuntimeError(f"readings of {run.devices_stored} of {DEVICES} devices stored")
    rss = median([r.rss_mb for r in ours])
    start = median([r.start_s for r in ours])
    heavy = sorted({name for r in ours for name in r.heavy})
    note = (
        f"{DEVICES} SunSpec devices polled every {POLL_INTERVAL_S:g} s; heavy libraries mapped:"
        f" {', '.join(heavy) or 'none'}; peak (VmHWM) {max(r.peak_mb for r in ours):.1f} MB"
    )
    figures = [
        Figure(
            bench=BENCH,
            metric="(l) edge profile idle RSS, 100 devices",
            unit="MB",
            ours=rss,
            baseline=median([r.rss_mb for r in raw]),
            baseline_label="minimal uvicorn app (raw_asgi_app.py)",
            stat=f"median of {count} starts (each the median VmRSS of the last "
            f"{SAMPLE_WINDOW_S:.0f} s of {steady:.0f} s steady)",
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            met=rss <= RSS_TARGET_MB,
            runs=[r.rss_mb for r in ours],
            baseline_runs=[r.rss_mb for r in raw],
            note=note,
        ),
        Figure(
            bench=BENCH,
            metric="(l) edge profile start to serving, 100 devices",
            unit="s",
            ours=start,
            baseline=median([r.start_s for r in raw]),
            baseline_label="minimal uvicorn app (raw_asgi_app.py)",
            stat=f"median of {count} starts, Popen to first /health 200",
            target=f"<= {START_TARGET_S:g} s",
            met=start <= START_TARGET_S,
            runs=[r.start_s for r in ours],
            baseline_runs=[r.start_s for r in raw],
            note=f"CPU time to serving: ours {median([r.start_cpu_s for r in ours]):.2f} s, "
            f"raw {median([r.start_cpu_s for r in raw]):.2f} s (medians; not stretched by load)",
        ),
    ]
    details = {
        "devices": DEVICES,
        "poll_interval_s": POLL_INTERVAL_S,
        "steady_s": steady,
        "ours": [vars(r) for r in ours],
        "raw": [vars(r) for r in raw],
        "machine": machine_info(),
    }
    emit(figures, args, details)


if __name__ == "__main__":
    main()
