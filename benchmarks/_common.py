"""Shared helpers of the benchmark scripts: figures, repeats, child processes, result output.

Every benchmark measures our figure and a raw baseline in the same run, repeats both (interleaved,
so noise hits them alike) and reports a summary statistic plus every run, so a noisy machine shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from derim.sim.processes import stop_process

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
CHILD_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
"""The only variables a server child inherits: settings read many plain names (PORT, HOST...)."""


@dataclass
class Figure:
    """One reported measurement: ours beside the raw baseline, with the target it is held to."""

    bench: str
    metric: str
    unit: str
    ours: float
    baseline: float | None
    baseline_label: str
    stat: str
    """How the runs were summarised, e.g. ``median of 5``."""
    target: str = ""
    met: bool | None = None
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    note: str = ""
    no_ratio: bool = False
    """Set where ``ours / baseline`` means nothing (a slope near zero)."""

    @property
    def ratio(self) -> float | None:
        """``ours / baseline`` (for throughput the share of raw; for latency times slower)."""
        if self.no_ratio or self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict with figures rounded to a sensible precision."""
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else _round(self.ratio)
        for key in ("ours", "baseline"):
            if data[key] is not None:
                data[key] = _round(data[key])
        data["runs"] = [_round(v) for v in self.runs]
        data["baseline_runs"] = [_round(v) for v in self.baseline_runs]
        return data


def _round(value: float) -> float:
    """Three significant decimals for small numbers, whole numbers for large ones."""
    if value == 0 or not math.isfinite(value):
        return value
    if abs(value) >= 1000:
        return float(round(value))
    return round(value, max(0, 3 - math.floor(math.log10(abs(value)))))


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="Short version (fewer, smaller runs).")
    parser.add_argument("--repeats", type=int, help="Repetitions of each measurement.")
    parser.add_argument("--json", type=Path, help="Write the figures to this JSON file.")
    return parser


def repeats(args: argparse.Namespace, quick: int = 3, full: int = 5) -> int:
    """The number of repetitions asked for, or the default of the mode."""
    value: int = args.repeats or (quick if args.quick else full)
    return max(1, min(value, 50))


def fmt(value: float | None, unit: str = "") -> str:
    """A figure for humans: thousands separators for big numbers."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def print_figures(figures: Sequence[Figure]) -> None:
    """A small table: metric, ours, baseline, ratio, target and verdict."""
    header = f"{'metric':<52} {'ours':>18} {'raw baseline':>18} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for fig in figures:
        ratio = "-" if fig.ratio is None else f"{fig.ratio:.3g}"
        verdict = "" if fig.met is None else ("  MET" if fig.met else "  MISSED")
        print(
            f"{fig.metric:<52} {fmt(fig.ours, fig.unit):>18} {fmt(fig.baseline, fig.unit):>18} "
            f"{ratio:>7}  {fig.target}{verdict}"
        )
        print(f"{'':<8}{fig.stat}; baseline: {fig.baseline_label}")
        if fig.note:
            print(f"{'':<8}note: {fig.note}")


def emit(figures: Sequence[Figure], args: argparse.Namespace, extra: dict[str, object]) -> None:
    """Print the figures and, with ``--json``, write them (plus ``extra`` details) to a file."""
    print()
    print_figures(figures)
    if args.json is not None:
        payload = {"figures": [f.to_json() for f in figures], "details": extra}
        args.json.write_text(json.dumps(payload, indent=1))


def machine_info() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident set size (VmRSS, VmHWM) of a process, in MB."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed (as ``derim serve`` does: uvicorn's default), else
    on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def child_env(**overrides: str) -> dict[str, str]:
    """A minimal environment for a server child, plus ``overrides``."""
    env = {k: os.environ[k] for k in CHILD_ENV_KEEP if k in os.environ}
    env.update(overrides)
    return env


class ServerProcess:
    """A server child on 127.0.0.1 that is ready once ``ready_path`` answers 200; always stopped."""

    def __init__(
        self, argv: list[str], *, port: int, env: dict[str, str], log_path: Path, ready_path: str
    ) -> None:
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    def start(self) -> None:
        """Start the child and wait (bounded) until it answers."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after a grace period)."""
        process, self.process = self.process, None
        stop_process(process, STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child printed."""
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def derim_server(data_dir: Path, port: int, **settings: str) -> ServerProcess:
    """``derim serve`` on 127.0.0.1:``port`` with its data in ``data_dir`` (log level WARNING)."""
    env = child_env(
        DERIM_DATA_DIR=str(data_dir),
        DERIM_PORT=str(port),
        DERIM_HOST="127.0.0.1",
        DERIM_LOG_LEVEL="WARNING",
        # Without keys unless asked: most benchmarks measure the data path, not key checks.
        **{f"DERIM_{k.upper()}": v for k, v in {"auth_enabled": "false", **settings}.items()},
    )
    return ServerProcess(
        [sys.executable, "-m", "derim.cli", "serve"],
        port=port,
        env=env,
        log_path=data_dir / "server.log",
        ready_path="/health",
    )


def raw_server(log_dir: Path, port: int) -> ServerProcess:
    """The minimal uvicorn ASGI app (reads the body, answers 202) on 127.0.0.1:``port``."""
    return ServerProcess(
        [sys.executable, str(BENCH_DIR / "raw_asgi_app.py"), "--port", str(port)],
        port=port,
        env=child_env(),
        log_path=log_dir / "raw_server.log",
        ready_path="/health",
    )


@contextlib.contextmanager
def progress(label: str) -> Iterator[None]:
    """Print what is being done and how long it took."""
    print(f"  {label} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)
