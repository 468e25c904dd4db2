"""Run every benchmark (each in its own process), print one summary table, write results.json.

Usage: ``python benchmarks/run_all.py [--quick] [--only a,c] [--duration S]``. Default is the full
suite (about 25 minutes, plus ~2 minutes the first time to build the query database);
``--quick`` runs short versions in about 6 minutes. With ``--only``, the other benchmarks' earlier
entries in ``results.json`` are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, ROOT, Figure, fmt, machine_info

RESULTS = BENCH_DIR / "results.json"
SKIPPED = 77
"""Exit status of a benchmark that cannot run here (for example influxd missing)."""
INTERRUPT_GRACE_S = 60.0
BENCHES: dict[str, tuple[str, str]] = {
    "a": ("bench_ingest_sqlite.py", "ingest through the bus into SQLite"),
    "b": ("bench_ingest_influx.py", "ingest through the bus into InfluxDB"),
    "c": ("bench_http_ingest.py", "POST /api/v1/telemetry over HTTP"),
    "d": ("bench_query.py", "query latency, a year of 1-s data"),
    "e": ("bench_rss.py", "RSS under sustained ingest"),
    "f": ("bench_polling.py", "polling 1,000 SunSpec devices over Modbus TCP"),
    "g": ("bench_mqtt.py", "MQTT broker to stored record, QoS 1 and 0"),
    "h": ("bench_ocpp.py", "OCPP central system: many chargers, heartbeats and meter values"),
    "i": ("bench_api_load.py", "API under mixed load: 50 clients, reads, ingest, commands"),
    "j": ("bench_twin.py", "digital twin: accuracy on real PV, LSTM training, served forecasts"),
    "k": ("bench_stream.py", "live stream: reading to WebSocket clients, 1,000 devices"),
    "l": ("bench_edge.py", "edge profile: idle RSS and start-up time, 100 devices"),
}


def git_state() -> dict[str, object]:
    """The commit measured and whether ``src/`` had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return {}
    return {"commit": commit, "src_uncommitted_changes": bool(dirty)}


def run_one(script: str, flags: list[str], timeout_s: float) -> tuple[int, dict[str, object]]:
    """Run one benchmark in its own process group; returns its exit status and JSON output.

    On timeout or Ctrl-C the group gets SIGINT (so servers are stopped by the benchmark's own
    clean-up), then SIGKILL after a grace period.
    """
    with tempfile.TemporaryDirectory(prefix="derim-bench-run-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, str(BENCH_DIR / script), *flags, "--json", str(out)]
        process = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        try:
            status = process.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            _interrupt(process)
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"  {script} timed out after {timeout_s:.0f} s", flush=True)
            return -1, {}
        data: dict[str, object] = json.loads(out.read_text()) if out.exists() else {}
        return status, data


def _interrupt(process: subprocess.Popen[bytes]) -> None:
    """SIGINT the benchmark's process group, then SIGKILL it if it does not finish in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=INTERRUPT_GRACE_S)


def print_summary(entries: dict[str, dict[str, object]]) -> None:
    """One table with every figure of the benchmarks that ran."""
    print()
    header = (
        f"{'metric':<52} {'ours':>18} {'raw baseline':>18} {'ratio':>7}  {'target':<40} verdict"
    )
    print(header)
    print("=" * len(header))
    for key, entry in entries.items():
        figures = entry.get("figures") or []
        if not figures:
            print(f"({key}) {BENCHES[key][1]}: {entry['status']}")
            continue
        for data in figures:  # type: ignore[union-attr]
            fig = Figure(**{k: v for k, v in data.items() if k != "ratio"})
            ratio = "-" if fig.ratio is None else f"{fig.ratio:.3g}"
            verdict = {None: "", True: "met", False: "MISSED"}[fig.met]
            print(
                f"{fig.metric:<52} {fmt(fig.ours, fig.unit):>18} "
                f"{fmt(fig.baseline, fig.unit):>18} {ratio:>7}  {fig.target:<40} {verdict}"
            )
    print("ratio = ours / raw baseline (throughput: share of raw; latency and memory: x raw)")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; exit status 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Short versions of every benchmark.")
    parser.add_argument("--only", default="", help="Comma-separated subset of " + ",".join(BENCHES))
    parser.add_argument("--duration", type=float, help="Seconds of (e)'s sustained ingest.")
    parser.add_argument("--timeout", type=float, default=3_600.0, help="Per-benchmark limit (s).")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where to write results.")
    args = parser.parse_args(argv)
    selected = [k.strip() for k in args.only.split(",") if k.strip()] or list(BENCHES)
    unknown = [k for k in selected if k not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    mode = "quick" if args.quick else "full"
    git = git_state()
    machine = machine_info()
    entries: dict[str, dict[str, object]] = {}
    failed = False
    for key in selected:
        script, title = BENCHES[key]
        print(f"\n=== ({key}) {title} [{mode}] ===", flush=True)
        flags = ["--quick"] if args.quick else []
        if key == "e" and args.duration:
            flags += ["--duration", str(args.duration)]
        started = time.monotonic()
        status, data = run_one(script, flags, args.timeout)
        state = {0: "ok", SKIPPED: "skipped"}.get(status, f"failed (exit {status})")
        failed = failed or state.startswith("failed")
        entries[key] = {
            "title": title,
            "status": state,
            "mode": mode,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1),
            "figures": data.get("figures", []),
            "details": data.get("details", {}),
        }
    print_summary(entries)
    previous: dict[str, object] = {}
    if args.output.exists() and len(selected) < len(BENCHES):
        with contextlib.suppress(ValueError):
            previous = json.loads(args.output.read_text()).get("benchmarks", {})
    results = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "git": git,
        "benchmarks": previous | entries,
    }
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
