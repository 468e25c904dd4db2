"""(h) The OCPP central system under many chargers, against a bare websocket "echo" server.

Ours: ``derim serve`` (own process, fresh data directory per run, SQLite, log level WARNING) with
its central system on ``ws://127.0.0.1:<port>/ocpp/{id}``; unknown chargers are registered on
connect. Raw: ``_ocpp_load.py echo``, a bare ``websockets`` server (own process, same loop and
websocket settings) that parses every CALL and answers ``[3, id, {}]``. Both get the same load
from ``_ocpp_load.LoadGenerator`` in another process: N chargers (OCPP 1.6, plain ``websockets``
client, no compression) connect at most ``--concurrency`` handshakes at a time, each booting with
a BootNotification; then an open-loop schedule of Heartbeat and MeterValues (50/50; MeterValues of
connector 1 with the energy register, power, and current and voltage per phase) at 1,500 CALLs/s
over a steady window, every charger keeping one CALL in flight at most. Latency runs from sending
a CALL to receiving its answer. Then the offered rate is stepped from 1,500/s, x1.3 up while the
steps pass (or /1.3 down while they fail); a step passes when >= 99% of its CALLs are answered,
none with a CALLERROR, p99 latency <= 100 ms and p99 send lateness <= 100 ms (the load was
really offered). The highest passing step is the saturation rate. Afterwards: connections still
open (held), DERIM's ``/health`` counters and the MeterValues stored in SQLite (one record each).
Server CPU comes from ``/proc/<pid>/stat``, generator CPU from the generator processes.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    Figure,
    ServerProcess,
    arg_parser,
    child_env,
    derim_server,
    emit,
    free_port,
    machine_info,
    median,
    progress,
    repeats,
    rss_mb,
)
from _ocpp_load import ConnectResult, LoadGenerator, PhaseResult, percentile_of, raise_nofile

BENCH = "h_ocpp"
RATE = 1_500.0
"""Offered CALLs/s of the steady window (the issue's target)."""
CHARGERS_TARGET = 10_000
P99_TARGET_MS = 100.0
HANDLED_SHARE = 0.99
"""A step (or the steady window) counts as handled when this share of its CALLs is answered."""
RAMP_FACTOR = 1.3
RAMP_MAX = 30_000.0
RAMP_MIN = 100.0
SETTLE_S = 2.0
"""Pause after connecting, so registry writes and boots have finished before measuring."""
MODES = {
    "quick": {"chargers": 2_000, "window_s": 10.0, "warmup_s": 2.0, "step_s": 5.0},
    "full": {"chargers": 10_000, "window_s": 30.0, "warmup_s": 5.0, "step_s": 10.0},
}
STEP_WARMUP_S = 2.0
HEALTH_TIMEOUT_S = 120.0


@dataclass
class ServerRun:
    """One server (ours or echo) under the load."""

    kind: str
    connect: ConnectResult
    steady: PhaseResult
    ramp: list[PhaseResult] = field(default_factory=list)
    rss_idle_mb: float = 0.0
    rss_connected_mb: float = 0.0
    rss_peak_mb: float = 0.0
    server_cpu: dict[str, float] = field(default_factory=dict)
    """Share of one core the server used: connect, steady."""
    held: int = 0
    closed_during_runs: int = 0
    health: dict[str, Any] = field(default_factory=dict)
    """Ours: ``/health`` after the steady window (``ocpp``) and at the end."""
    rows: int | None = None
    """Ours: distinct telemetry rows in SQLite after the server stopped."""
    server_gc_pauses_ms: list[float] | None = None
    long_gc_pauses_in_window: int | None = None
    """DERIM's collector pauses over 100 ms during the steady window."""
    """Echo: its garbage-collector pauses of 20 ms or more (from its log)."""

    @property
    def saturation(self) -> float:
        """CALLs/s handled at the highest load step (steady window included) that passed."""
        good = [step.handled for step in self.phases if step_ok(step)]
        return max(good, default=0.0)

    @property
    def phases(self) -> list[PhaseResult]:
        """The steady window and the ramp steps."""
        return [self.steady, *self.ramp]

    @property
    def answered_total(self) -> int:
        """Every CALL answered with a CALLRESULT: boots, then steady and ramp (warm-ups too)."""
        return self.connect.connected + sum(p.all_answered for p in self.phases)

    @property
    def meter_values_answered(self) -> int:
        """Every MeterValues answered with a CALLRESULT (warm-ups too)."""
        return sum(p.all_meter_values_answered for p in self.phases)


def step_ok(step: PhaseResult) -> bool:
    """Whether a load step was handled: nearly all answered, none refused, p99 in bounds, and
    the CALLs went out on schedule (p99 lateness in bounds too; else the rate was not really
    offered: the generator fell behind, or chargers waited for answers to their last CALL)."""
    return (
        step.answered >= HANDLED_SHARE * step.offered
        and not step.call_errors
        and step.latency(99) <= P99_TARGET_MS
        and step.late(99) <= P99_TARGET_MS
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo_server(log_dir: Path, port: int) -> ServerProcess:
    """The bare websockets baseline on 127.0.0.1:``port``."""
    return ServerProcess(
        [sys.executable, str(BENCH_DIR / "_ocpp_load.py"), "echo", "--port", str(port)],
        port=port,
        env=child_env(),
        log_path=log_dir / "echo_server.log",
        ready_path="/health",
    )


def distinct_rows(database: Path) -> int:
    """Distinct (device, timestamp) rows in raw telemetry, merged or still staged."""
    conn = sqlite3.connect(database)
    try:
        (count,) = conn.execute(
            "SELECT count(*) FROM (SELECT dev, ts FROM telemetry UNION SELECT dev, ts FROM staging)"
        ).fetchone()
    finally:
        conn.close()
    return int(count)


def gc_pauses(log: Path) -> list[float]:
    """The garbage-collector pauses the echo server logged (ms)."""
    found = re.findall(r"gc pause ([0-9.]+) ms", log.read_text(errors="replace"))
    return [float(ms) for ms in found]


def health(server: ServerProcess) -> dict[str, Any]:
    """DERIM's ``/health``; ``{"error": ...}`` when it does not answer in time (its API shares
    the event loop with the central system, so an overloaded loop delays it)."""
    started = time.perf_counter()
    try:
        data: dict[str, Any] = httpx.get(server.url + "/health", timeout=HEALTH_TIMEOUT_S).json()
    except httpx.HTTPError as exc:
        print(f"    /health: {type(exc).__name__} after {HEALTH_TIMEOUT_S:.0f} s", flush=True)
        return {"error": f"{type(exc).__name__} after {HEALTH_TIMEOUT_S:.0f} s"}
    data["answered_in_s"] = round(time.perf_counter() - started, 3)
    return data


def long_gc_pauses(server: ServerProcess) -> int | None:
    """How many of DERIM's collector pauses so far lasted over 100 ms (``/metrics``)."""
    try:
        text = httpx.get(server.url + "/metrics", timeout=HEALTH_TIMEOUT_S).text
    except httpx.HTTPError:
        return None
    counts = dict(re.findall(r'derim_gc_pause_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', text))
    if "0.1" not in counts or "+Inf" not in counts:
        return None
    return int(float(counts["+Inf"]) - float(counts["0.1"]))


def measure(kind: str, args: argparse.Namespace, mode: dict[str, float]) -> ServerRun:
    """Start one server, put the load on it and stop it."""
    chargers = int(args.chargers or mode["chargers"])
    with tempfile.TemporaryDirectory(prefix="derim-bench-h-") as tmp:
        root, ws_port = Path(tmp), free_port()
        if kind == "ours":
            server = derim_server(root, free_port(), ocpp_port=str(ws_port))
        else:
            server = echo_server(root, ws_port)
        url = f"ws://127.0.0.1:{ws_port}/ocpp/"
        with (
            server,
            LoadGenerator(
                url, chargers, processes=args.generators, concurrency=args.concurrency
            ) as gen,
        ):
            rss_idle, _ = rss_mb(server.pid)
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            with progress(f"{kind}: connecting {chargers:,} chargers"):
                connect = gen.connect()
            cpu_connect = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
            time.sleep(SETTLE_S)
            rss_connected, _ = rss_mb(server.pid)
            pauses_before = long_gc_pauses(server) if kind == "ours" else None
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            with progress(f"{kind}: {RATE:,.0f} CALLs/s for {mode['window_s']:.0f} s"):
                steady = gen.run(RATE, mode["warmup_s"], mode["window_s"])
            cpu_steady = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
            run = ServerRun(kind, connect, steady)
            if kind == "ours":
                run.health["after_steady"] = health(server)
                pauses_after = long_gc_pauses(server)
                if pauses_before is not None and pauses_after is not None:
                    run.long_gc_pauses_in_window = pauses_after - pauses_before
            _print_phase(kind, steady)
            if not args.no_ramp:
                run.ramp = ramp(gen, kind, step_ok(steady), mode["step_s"])
            closing = gen.close()
            run.held, run.closed_during_runs = closing["held"], closing["closed_during_runs"]
            run.rss_idle_mb, run.rss_connected_mb = rss_idle, rss_connected
            _, run.rss_peak_mb = rss_mb(server.pid)
            run.server_cpu = {"connect": round(cpu_connect, 3), "steady": round(cpu_steady, 3)}
            if kind == "ours":
                time.sleep(1.0)
                run.health["end"] = health(server)
        if kind == "ours":
            run.rows = distinct_rows(root / "derim.db")
        else:
            run.server_gc_pauses_ms = gc_pauses(server.log_path)
    print(
        f"  {kind}: connected {connect.connected:,} in {connect.seconds:.1f} s (failed "
        f"{connect.failed}, retries {connect.retries}), held {run.held:,}, RSS idle "
        f"{run.rss_idle_mb:.0f} MB, connected {run.rss_connected_mb:.0f} MB, saturation "
        f"{run.saturation:,.0f} CALLs/s, server CPU {run.server_cpu}"
        + ("" if run.rows is None else f", rows {run.rows:,}")
        + (
            ""
            if run.long_gc_pauses_in_window is None
            else f", GC pauses > 100 ms in the window: {run.long_gc_pauses_in_window}"
        )
        + (
            ""
            if run.server_gc_pauses_ms is None
            else f", echo GC pauses >= 20 ms: {len(run.server_gc_pauses_ms)}, max "
            f"{max(run.server_gc_pauses_ms, default=0):.0f} ms"
        ),
        flush=True,
    )
    return run


def ramp(gen: LoadGenerator, kind: str, up: bool, step_s: float) -> list[PhaseResult]:
    """Steps from the steady rate: up x1.3 until one fails, or (when the steady window
    failed) down /1.3 until one passes."""
    steps: list[PhaseResult] = []
    factor = RAMP_FACTOR if up else 1 / RAMP_FACTOR
    rate = RATE * factor
    while RAMP_MIN <= rate <= RAMP_MAX:
        step = gen.run(rate, STEP_WARMUP_S, step_s)
        steps.append(step)
        _print_phase(f"{kind} ramp", step)
        if step_ok(step) != up:
            break
        rate *= factor
    return steps


def _print_phase(kind: str, phase: PhaseResult) -> None:
    print(
        f"    {kind} @ {phase.rate:,.0f}/s: handled {phase.handled:,.0f}/s ({phase.answered:,} "
        f"of {phase.offered:,}), p50 {phase.latency(50):.1f} ms, p99 {phase.latency(99):.1f} "
        f"ms, max {phase.latency(100):.0f} ms, errors {phase.call_errors}, unanswered "
        f"{phase.unanswered}, late p99 {phase.late(99):.1f} ms, generator CPU "
        f"{phase.cpu_s / phase.seconds:.0%}, GC max {phase.gc_max_ms:.0f} ms; p99 Heartbeat "
        f"{percentile_of(phase.by_action_ms['heartbeat'], 99):.1f} ms, MeterValues "
        f"{percentile_of(phase.by_action_ms['meter_values'], 99):.1f} ms",
        flush=True,
    )
    if phase.latency(99) > P99_TARGET_MS:
        worst = ", ".join(f"{t}s:{ms:.0f}" for t, (_, ms) in enumerate(phase.timeline) if ms > 100)
        print(f"      seconds with a CALL over 100 ms (second:max ms): {worst}", flush=True)


def check(run: ServerRun) -> dict[str, int | None]:
    """Ours: what /health and SQLite say against what the generator saw answered (None where
    /health did not answer)."""
    end, steady = run.health["end"], run.health["after_steady"]
    ocpp = end.get("ocpp") or {"messages": None, "call_errors": None}
    ingest = end.get("ingest") or {"stored": None, "spooled": None, "dropped": None}
    return {
        "ocpp_messages": ocpp["messages"],
        "calls_sent": run.connect.connected + sum(p.all_sent for p in run.phases),
        "calls_answered": run.answered_total,
        "messages_short": None
        if ocpp["messages"] is None
        else max(0, run.answered_total - int(ocpp["messages"])),
        "meter_values_answered": run.meter_values_answered,
        "ingest_stored": ingest["stored"],
        "ingest_spooled": ingest["spooled"],
        "ingest_dropped": ingest["dropped"],
        "rows": run.rows or 0,
        "lost": max(0, run.meter_values_answered - (run.rows or 0)),
        "stored_not_answered": max(0, (run.rows or 0) - run.meter_values_answered),
        "connected_after_steady": (steady.get("ocpp") or {}).get("connected"),
        "health_after_steady_s": steady.get("answered_in_s"),
        "call_errors": ocpp["call_errors"],
    }


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--chargers", type=int, help="Chargers (default: quick 2,000; 10,000).")
    parser.add_argument("--window", type=float, help="Seconds of the steady window.")
    parser.add_argument("--generators", type=int, default=1, help="Load generator processes.")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="Handshakes in progress at most."
    )
    parser.add_argument("--no-ramp", action="store_true", help="Skip the saturation ramp.")
    args: argparse.Namespace = parser.parse_args(argv)
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.window:
        mode["window_s"] = args.window
        mode["step_s"] = min(mode["step_s"], args.window)
    chargers = int(args.chargers or mode["chargers"])
    soft, hard = raise_nofile()
    if soft < chargers + 500:  # the server and each generator process hold one per charger
        raise SystemExit(f"open files limit {soft} (hard {hard}) too low for {chargers} chargers")
    n_rep = repeats(args, quick=1, full=3)
    started = time.monotonic()
    echo_runs: list[ServerRun] = []
    ours_runs: list[ServerRun] = []
    for rep in range(n_rep):
        print(f"  repetition {rep + 1}/{n_rep}", flush=True)
        echo_runs.append(measure("echo", args, mode))
        ours_runs.append(measure("ours", args, mode))
    runtime_s = time.monotonic() - started
    print(f"  runtime {runtime_s:.0f} s", flush=True)
    checks = [check(run) for run in ours_runs]
    for c in checks:
        print(f"  check: {c}", flush=True)
    figures = _figures(chargers, mode, args, echo_runs, ours_runs, checks)
    details = {
        "chargers": chargers,
        "rate": RATE,
        "mode": mode,
        "generators": args.generators,
        "concurrency": args.concurrency,
        "repeats": n_rep,
        "runtime_s": round(runtime_s, 1),
        "open_files_limit": [soft, hard],
        "runs": [_run_details(run) for pair in zip(echo_runs, ours_runs, strict=True)
                 for run in pair],
        "checks": checks,
        "machine": machine_info(),
    }  # fmt: skip
    emit(figures, args, details)


def _run_details(run: ServerRun) -> dict[str, Any]:
    c = run.connect
    return {
        "kind": run.kind,
        "connect": {
            "connected": c.connected, "failed": c.failed, "retries": c.retries,
            "rejected": c.rejected, "errors": c.errors, "seconds": round(c.seconds, 2),
            "generator_cpu_s": round(c.cpu_s, 2),
            "handshake_ms": _pcts(c.handshake_ms), "boot_ms": _pcts(c.boot_ms),
        },
        "steady": run.steady.summary(),
        "ramp": [step.summary() | {"ok": step_ok(step)} for step in run.ramp],
        "saturation": round(run.saturation, 1),
        "held": run.held,
        "closed_during_runs": run.closed_during_runs,
        "rss_mb": {"idle": round(run.rss_idle_mb, 1), "connected": round(run.rss_connected_mb, 1),
                   "peak": round(run.rss_peak_mb, 1)},
        "server_cpu": run.server_cpu,
        "health": run.health,
        "rows": run.rows,
        "echo_gc_pauses_ms": run.server_gc_pauses_ms,
        "long_gc_pauses_in_window": run.long_gc_pauses_in_window,
    }  # fmt: skip


def _pcts(ordered: list[float]) -> dict[str, float]:
    return {f"p{p}": percentile_of(ordered, p) for p in (50, 99, 100)}


def _figures(
    chargers: int,
    mode: dict[str, float],
    args: argparse.Namespace,
    echo: list[ServerRun],
    ours: list[ServerRun],
    checks: list[dict[str, int | None]],
) -> list[Figure]:
    """Held chargers, connect time, CALLs/s and latency at 1,500/s, saturation, RSS, loss."""
    n = len(ours)
    stat = f"median of {n}"
    label = f"bare websockets server answering [3, id, {{}}], same {args.generators} generator"
    label += " process" if args.generators == 1 else " processes"
    judged = chargers >= CHARGERS_TARGET
    held_o = [float(r.held) for r in ours]
    held_e = [float(r.held) for r in echo]
    conn_o = [r.connect.seconds for r in ours]
    conn_e = [r.connect.seconds for r in echo]
    rate_o = [r.steady.handled for r in ours]
    rate_e = [r.steady.handled for r in echo]
    p99_o = [r.steady.latency(99) for r in ours]
    p99_e = [r.steady.latency(99) for r in echo]
    p50_o = [r.steady.latency(50) for r in ours]
    p50_e = [r.steady.latency(50) for r in echo]
    sat_o = [r.saturation for r in ours]
    sat_e = [r.saturation for r in echo]
    rss_o = [r.rss_connected_mb for r in ours]
    rss_e = [r.rss_connected_mb for r in echo]
    peak_o = [r.rss_peak_mb for r in ours]
    peak_e = [r.rss_peak_mb for r in echo]
    lost = [float(c["lost"] or 0) for c in checks]
    errors = sum(r.steady.call_errors + r.steady.unanswered for r in ours)
    per_charger = median(
        [(r.rss_connected_mb - r.rss_idle_mb) * 1024 / max(1, r.connect.connected) for r in ours]
    )
    window = f"{mode['window_s']:.0f}-s window, {chargers:,} chargers"
    cpu_o = median([r.server_cpu["steady"] for r in ours])
    cpu_e = median([r.server_cpu["steady"] for r in echo])
    cpu_g = median([r.steady.cpu_s / r.steady.seconds for r in ours + echo])
    cpu_note = (
        f"server CPU at {RATE:,.0f}/s: ours {cpu_o:.0%} of a core, echo {cpu_e:.0%}; "
        f"generator {cpu_g:.0%}"
    )
    top = [max((s for s in r.phases if step_ok(s)), key=lambda s: s.handled, default=None)
           for r in echo]  # fmt: skip
    sat_cpu = median([s.cpu_s / s.seconds for s in top if s is not None] or [0.0])
    boot_p99 = median([_pcts(r.connect.boot_ms)["p99"] for r in ours])
    held_note = (
        f"{chargers:,} offered; open at the end of the run; DERIM /health connected after the "
        f"steady window: {[c['connected_after_steady'] for c in checks]} (None: /health did "
        f"not answer within {HEALTH_TIMEOUT_S:.0f} s)"
    )
    if not judged:
        held_note += f"; not judged: fewer than {CHARGERS_TARGET:,} offered"
    figures = [
        Figure(BENCH, "(h) OCPP chargers held concurrently", "chargers", min(held_o), min(held_e),
               label, f"min of {n}", f">= {CHARGERS_TARGET:,}",
               min(held_o) >= CHARGERS_TARGET if judged else None, held_o, held_e,
               note=held_note),
        Figure(BENCH, f"(h) OCPP time to connect + boot {chargers:,}", "s", median(conn_o),
               median(conn_e), label, stat, "", None, conn_o, conn_e,
               note=f"at most {args.concurrency} handshakes at a time; ours: registers each new "
               f"charger; boot p99 {boot_p99:.0f} ms"),
        Figure(BENCH, f"(h) OCPP CALLs/s handled at {RATE:,.0f}/s offered", "CALLs/s",
               median(rate_o), median(rate_e), label, stat, f">= {RATE:,.0f} CALLs/s",
               median(rate_o) >= HANDLED_SHARE * RATE and not errors, rate_o, rate_e,
               note=f"{window}; Heartbeat/MeterValues 50/50; CALLERRORs + unanswered: "
               f"{errors}; {cpu_note}"),
        Figure(BENCH, f"(h) OCPP p99 CALL latency at {RATE:,.0f}/s", "ms", median(p99_o),
               median(p99_e), label, stat, f"<= {P99_TARGET_MS:.0f} ms",
               median(p99_o) <= P99_TARGET_MS, p99_o, p99_e, note=window),
        Figure(BENCH, f"(h) OCPP p50 CALL latency at {RATE:,.0f}/s", "ms", median(p50_o),
               median(p50_e), label, stat, "", None, p50_o, p50_e, note=window),
        Figure(BENCH, "(h) OCPP max CALLs/s with p99 <= 100 ms", "CALLs/s", median(sat_o),
               median(sat_e), label, stat, "", None, sat_o, sat_e,
               note=f"offered rate stepped from {RATE:,.0f}/s, x{RAMP_FACTOR} up while steps "
               f"pass (down while they fail), {mode['step_s']:.0f}-s steps; highest step with "
               f">= 99% answered, no CALLERROR, p99 latency and lateness <= "
               f"{P99_TARGET_MS:.0f} ms (0: none); generator CPU at echo's top step "
               f"{sat_cpu:.0%}"),
        Figure(BENCH, f"(h) OCPP server RSS, {chargers:,} connected", "MB", median(rss_o),
               median(rss_e), label, stat, "", None, rss_o, rss_e,
               note=f"after connecting, before the load; ours ~{per_charger:.0f} KB per "
               f"connected charger over idle; peak (VmHWM) ours {median(peak_o):.0f} MB, echo "
               f"{median(peak_e):.0f} MB"),
        Figure(BENCH, "(h) OCPP MeterValues lost", "msgs", max(lost), 0.0,
               "generator (answered = stored)", f"max of {n}", "0", not any(lost), lost,
               note="MeterValues answered minus distinct telemetry rows in SQLite"),
    ]  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
