"""OCPP benchmark helpers: the charger load generator and the bare websocket "echo" baseline.

Both run as their own processes (on uvloop when it is installed, as ``derim serve`` does):

- ``python benchmarks/_ocpp_load.py echo --port N``: a bare ``websockets`` server that accepts any
  path with the subprotocols ``ocpp2.0.1``/``ocpp1.6`` and answers every OCPP-J CALL
  ``[2, id, action, payload]`` with a CALLRESULT ``[3, id, {}]`` (JSON parsed, answer built and
  serialised); ``GET /health`` answers 200. Same websockets settings as DERIM's central system
  (no compression, 60 s pings, 1 MiB frames, default listen backlog).
- ``python benchmarks/_ocpp_load.py generate URL PREFIX FIRST COUNT CONCURRENCY``: one generator
  process driving chargers ``PREFIX-FIRST`` .. ``PREFIX-(FIRST+COUNT-1)`` with the plain
  ``websockets`` client (not the ``ocpp`` library), subprotocol ``ocpp1.6``, no compression, no
  client pings. It obeys JSON commands on stdin, one a line, and answers each with one JSON line
  on stdout: ``connect`` (open every connection, at most CONCURRENCY handshakes at a time, each
  followed by a BootNotification), ``run`` (an open-loop schedule of Heartbeat and MeterValues at
  a given aggregate rate, latencies of the CALLs scheduled in the measured window) and ``close``.

``LoadGenerator`` is the parent side: it splits the chargers over one or more such processes and
merges their answers. Every charger keeps OCPP-J's rule of one CALL in flight: if a CALL is
still unanswered when the next is due, the next waits (its lateness is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from _common import run_loop

SUBPROTOCOLS = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
MAX_FRAME_BYTES = 1024 * 1024
SERVER_PING_S = 60.0
"""DERIM's default ``ocpp_ping_interval_s``; the echo server pings the same way."""
OPEN_TIMEOUT_S = 60.0
BOOT_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 15.0
"""A CALL with no answer after this long counts as unanswered (DERIM's own message timeout is
10 s, after which it answers an InternalError)."""
CONNECT_ATTEMPTS = 3
ECHO_GC_REPORT_MS = 20.0
START_DELAY_S = 0.2
"""Between the ``run`` command and the first scheduled CALL, so every task is in place."""


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft limit of open files to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class GcPauses:
    """Pauses of Python's cyclic garbage collector in this process (``gc.callbacks``)."""

    def __init__(self, report_over_ms: float | None = None) -> None:
        self.report_over_ms = report_over_ms
        self._started = 0.0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.max_ms = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = (time.perf_counter() - self._started) * 1000
        self.count += 1
        self.total_ms += pause
        self.max_ms = max(self.max_ms, pause)
        if self.report_over_ms is not None and pause >= self.report_over_ms:
            print(f"gc pause {pause:.1f} ms generation {info['generation']}", file=sys.stderr)

    def summary(self) -> dict[str, float]:
        return {"count": self.count, "total_ms": round(self.total_ms, 1),
                "max_ms": round(self.max_ms, 1)}  # fmt: skip


# --- the echo baseline ---------------------------------------------------------------------------


def _echo_health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/health":
        return connection.respond(200, "ok\n")
    return None


async def _echo_handler(websocket: ServerConnection) -> None:
    try:
        async for message in websocket:
            frame = json.loads(message)
            if frame[0] == 2:
                await websocket.send(json.dumps([3, frame[1], {}]))
    except ConnectionClosed:
        pass


async def echo_main(port: int) -> None:
    """Serve the echo baseline on 127.0.0.1:``port`` until killed; garbage-collector pauses of
    20 ms or more are printed to stderr (its log)."""
    GcPauses(report_over_ms=ECHO_GC_REPORT_MS)
    async with serve(
        _echo_handler,
        "127.0.0.1",
        port,
        subprotocols=SUBPROTOCOLS,
        process_request=_echo_health,
        compression=None,
        ping_interval=SERVER_PING_S,
        ping_timeout=SERVER_PING_S,
        max_size=MAX_FRAME_BYTES,
    ) as server:
        await server.serve_forever()


# --- one generator process -----------------------------------------------------------------------


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Charger:
    """One simulated OCPP 1.6 charger."""

    cp_id: str
    index: int
    ws: ClientConnection | None = None
    seq: int = 0
    energy_wh: int = 0
    calls: int = 0

    def next_id(self) -> str:
        self.seq += 1
        return str(self.seq)

    def boot(self) -> tuple[str, bytes]:
        uid = self.next_id()
        payload = {
            "chargePointVendor": "DERIM-bench",
            "chargePointModel": "LoadGen-1",
            "chargePointSerialNumber": self.cp_id,
            "firmwareVersion": "1.0.0",
        }
        return uid, orjson.dumps([2, uid, "BootNotification", payload])

    def heartbeat(self) -> tuple[str, bytes]:
        uid = self.next_id()
        return uid, orjson.dumps([2, uid, "Heartbeat", {}])

    def meter_values(self) -> tuple[str, bytes]:
        """A 1.6 MeterValues of connector 1: register, power, current and voltage per phase."""
        uid = self.next_id()
        wave = (self.index * 7919 + self.seq * 104_729) % 1000
        amps = [16.0 + ((wave + 37 * p) % 100) * 0.01 for p in range(3)]
        volts = [228.0 + ((wave + 53 * p) % 60) * 0.1 for p in range(3)]
        watts = sum(a * v for a, v in zip(amps, volts, strict=True))
        self.energy_wh += 10 + wave % 20
        sampled = [
            {"value": str(self.energy_wh), "measurand": "Energy.Active.Import.Register",
             "unit": "Wh", "context": "Sample.Periodic", "location": "Outlet"},
            {"value": f"{watts:.1f}", "measurand": "Power.Active.Import", "unit": "W"},
            *({"value": f"{a:.2f}", "measurand": "Current.Import", "phase": f"L{p + 1}",
               "unit": "A"} for p, a in enumerate(amps)),
            *({"value": f"{v:.1f}", "measurand": "Voltage", "phase": f"L{p + 1}-N",
               "unit": "V"} for p, v in enumerate(volts)),
        ]  # fmt: skip
        payload = {
            "connectorId": 1,
            "meterValue": [{"timestamp": _iso_now(), "sampledValue": sampled}],
        }
        return uid, orjson.dumps([2, uid, "MeterValues", payload])


async def _answer(ws: ClientConnection, uid: str, timeout_s: float) -> tuple[list[Any], int]:
    """The CALLRESULT/CALLERROR with ``uid`` and the number of stale answers skipped."""
    stale = 0
    async with asyncio.timeout(timeout_s):
        while True:
            frame = orjson.loads(await ws.recv(decode=False))
            if frame[0] in (3, 4) and frame[1] == uid:
                return frame, stale
            stale += 1


class Fleet:
    """The chargers of one generator process."""

    def __init__(self, url: str, prefix: str, first: int, count: int, concurrency: int) -> None:
        self.url = url.rstrip("/") + "/"
        self.chargers = [Charger(f"{prefix}-{i:05d}", i) for i in range(first, first + count)]
        self.concurrency = concurrency
        self.closed_during_runs = 0
        self.gc = GcPauses()

    async def connect(self) -> dict[str, Any]:
        """Open every connection and boot it; handshake and boot latencies."""
        gate = asyncio.Semaphore(self.concurrency)
        handshakes: list[float] = []
        boots: list[float] = []
        retries = failed = rejected = 0
        errors: dict[str, int] = {}
        cpu0, started = time.process_time(), time.perf_counter()

        async def one(charger: Charger) -> None:
            nonlocal retries, failed, rejected
            async with gate:
                for attempt in range(CONNECT_ATTEMPTS):
                    try:
                        t0 = time.perf_counter()
                        ws = await connect(
                            self.url + charger.cp_id,
                            subprotocols=[Subprotocol("ocpp1.6")],
                            compression=None,
                            open_timeout=OPEN_TIMEOUT_S,
                            ping_interval=None,
                            close_timeout=5,
                            proxy=None,
                        )
                        t1 = time.perf_counter()
                        uid, message = charger.boot()
                        await ws.send(message, text=True)
                        frame, _ = await _answer(ws, uid, BOOT_TIMEOUT_S)
                        t2 = time.perf_counter()
                    except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                        name = type(exc).__name__
                        errors[name] = errors.get(name, 0) + 1
                        if attempt + 1 == CONNECT_ATTEMPTS:
                            failed += 1
                            return
                        retries += 1
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    if frame[0] != 3 or frame[2].get("status", "Accepted") != "Accepted":
                        rejected += 1
                    charger.ws = ws
                    handshakes.append(t1 - t0)
                    boots.append(t2 - t1)
                    return

        await asyncio.gather(*(one(c) for c in self.chargers))
        # The generator is not under test: keep its collector from walking every connection's
        # objects (a full collection over 10,000 connections pauses it for hundreds of ms).
        gc.collect()
        gc.freeze()
        return {
            "connected": sum(c.ws is not None for c in self.chargers),
            "failed": failed,
            "retries": retries,
            "rejected": rejected,
            "errors": errors,
            "seconds": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu0,
            "handshake_ms": [round(x * 1000, 3) for x in handshakes],
            "boot_ms": [round(x * 1000, 3) for x in boots],
        }

    async def run(
        self, rate: float, warmup_s: float, window_s: float, offset: float
    ) -> dict[str, Any]:
        """Heartbeat and MeterValues (alternating per charger, 50/50 overall) at ``rate``/s.

        Charger ``i`` of ``n`` sends at ``t0 + (i + offset) / n * period + k * period`` with
        ``period = n / rate``; CALLs scheduled in ``[warmup, warmup + window)`` are measured.
        """
        live = [c for c in self.chargers if c.ws is not None and c.ws.state is State.OPEN]
        n = len(live)
        loop = asyncio.get_running_loop()
        period = n / rate
        t0 = loop.time() + START_DELAY_S
        end = warmup_s + window_s
        latencies: dict[str, list[float]] = {"heartbeat": [], "meter_values": []}
        lateness: list[float] = []
        counts = {"offered": 0, "answered": 0, "call_errors": 0, "unanswered": 0, "stale": 0,
                  "closed": 0, "heartbeat": 0, "meter_values": 0, "meter_values_sent": 0,
                  "all_sent": 0, "all_answered": 0, "all_meter_values_answered": 0}  # fmt: skip
        error_codes: dict[str, int] = {}
        self.gc.reset()
        last_answer = 0.0
        timeline: dict[int, list[float]] = {}
        """Per second of the phase (by send time): [CALLs answered, max latency ms]."""
        cpu0 = time.process_time()

        async def drive(i: int, charger: Charger) -> None:
            nonlocal last_answer
            ws = charger.ws
            assert ws is not None
            due = t0 + (i + offset) / n * period
            while due - t0 < end:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                measured = due - t0 >= warmup_s
                meter = (charger.index + charger.calls) % 2 == 1
                charger.calls += 1
                uid, message = charger.meter_values() if meter else charger.heartbeat()
                if measured:
                    counts["offered"] += 1
                    counts["meter_values_sent"] += meter
                    lateness.append(loop.time() - due)
                counts["all_sent"] += 1
                try:
                    sent = time.perf_counter()
                    await ws.send(message, text=True)
                    frame, stale = await _answer(ws, uid, CALL_TIMEOUT_S)
                    latency = time.perf_counter() - sent
                except TimeoutError:
                    counts["unanswered"] += measured
                    due += period
                    continue
                except ConnectionClosed:
                    counts["closed"] += 1
                    counts["unanswered"] += measured
                    return
                counts["stale"] += stale
                if frame[0] == 3:
                    counts["all_answered"] += 1
                    counts["all_meter_values_answered"] += meter
                    second = timeline.setdefault(int(due - t0), [0, 0.0])
                    second[0] += 1
                    second[1] = max(second[1], round(latency * 1000, 1))
                if measured:
                    if frame[0] == 3:
                        counts["answered"] += 1
                        action = "meter_values" if meter else "heartbeat"
                        counts[action] += 1
                        latencies[action].append(round(latency * 1000, 3))
                        last_answer = max(last_answer, loop.time() - t0)
                    else:
                        counts["call_errors"] += 1
                        error_codes[frame[2]] = error_codes.get(frame[2], 0) + 1
                due += period

        started = time.perf_counter()
        await asyncio.gather(*(drive(i, c) for i, c in enumerate(live)))
        self.closed_during_runs += counts["closed"]
        return counts | {
            "chargers": n,
            "rate": rate,
            "window_s": window_s,
            "span_s": max(window_s, last_answer - warmup_s),
            "error_codes": error_codes,
            "seconds": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu0,
            "gc": self.gc.summary(),
            "timeline": timeline,
            "latency_ms": latencies,
            "lateness_ms": [round(x * 1000, 3) for x in lateness],
        }

    async def close(self) -> dict[str, Any]:
        """How many connections are still open (held), then close them all."""
        held = sum(c.ws is not None and c.ws.state is State.OPEN for c in self.chargers)
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(ws: ClientConnection) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await ws.close()

        started = time.perf_counter()
        await asyncio.gather(*(one(c.ws) for c in self.chargers if c.ws is not None))
        return {
            "held": held,
            "closed_during_runs": self.closed_during_runs,
            "close_s": time.perf_counter() - started,
        }


async def generate_main(args: argparse.Namespace) -> None:
    """Child side of ``LoadGenerator``: obey commands on stdin, answer on stdout."""
    fleet = Fleet(args.url, args.prefix, args.first, args.count, args.concurrency)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        op = command.pop("op")
        if op == "connect":
            answer = await fleet.connect()
        elif op == "run":
            answer = await fleet.run(**command)
        elif op == "close":
            answer = await fleet.close()
        else:
            answer = {"error": f"unknown command {op!r}"}
        sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        sys.stdout.flush()
        if op == "close":
            return


# --- the parent side -----------------------------------------------------------------------------


@dataclass
class ConnectResult:
    """The connect phase of every generator process together."""

    connected: int
    failed: int
    retries: int
    rejected: int
    errors: dict[str, int]
    seconds: float
    cpu_s: float
    handshake_ms: list[float]
    boot_ms: list[float]


@dataclass
class PhaseResult:
    """One ``run`` of every generator process together (counts are of measured CALLs)."""

    rate: float
    window_s: float
    span_s: float
    """From the window's start to the last answer of a CALL scheduled in it (>= window)."""
    chargers: int
    offered: int
    answered: int
    call_errors: int
    unanswered: int
    closed: int
    stale: int
    heartbeat: int
    meter_values: int
    meter_values_sent: int
    all_sent: int
    """CALLs sent in the whole phase (warm-up and drain included); likewise below."""
    all_answered: int
    all_meter_values_answered: int
    error_codes: dict[str, int]
    seconds: float
    cpu_s: float
    gc_max_ms: float
    """Longest garbage-collector pause of a generator process during the phase."""
    timeline: list[list[float]] = field(repr=False)
    """Per second of the phase by send time (warm-up included): [CALLs answered, max ms]."""
    latency_ms: list[float] = field(repr=False)
    """Sorted."""
    by_action_ms: dict[str, list[float]] = field(repr=False)
    """Sorted latencies of Heartbeat and of MeterValues."""
    lateness_ms: list[float] = field(repr=False)
    """Sorted: how long after its scheduled time each CALL was sent."""

    @property
    def handled(self) -> float:
        """CALLs/s answered with a CALLRESULT, of those scheduled in the window, over the time
        from the window's start to the last of their answers (the window at least)."""
        return self.answered / self.span_s

    def latency(self, pct: float) -> float:
        """Nearest-rank percentile of the latencies (ms); inf when nothing was answered."""
        return percentile_of(self.latency_ms, pct)

    def late(self, pct: float) -> float:
        """Nearest-rank percentile of the send lateness (ms)."""
        return percentile_of(self.lateness_ms, pct)

    def summary(self) -> dict[str, Any]:
        """Everything but the samples, with percentiles."""
        samples = ("latency_ms", "lateness_ms", "by_action_ms")
        data = {k: v for k, v in self.__dict__.items() if k not in samples}
        return data | {
            "handled_per_s": round(self.handled, 1),
            "latency_ms": {f"p{p}": self.latency(p) for p in (50, 90, 99, 99.9, 100)},
            **{
                f"{action}_latency_ms": {f"p{p}": percentile_of(values, p) for p in (50, 99, 100)}
                for action, values in self.by_action_ms.items()
            },
            "lateness_ms": {f"p{p}": self.late(p) for p in (50, 99, 100)},
        }


def percentile_of(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values; inf when there are none."""
    if not ordered:
        return math.inf
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class LoadGenerator:
    """``chargers`` simulated chargers split over ``processes`` generator processes."""

    def __init__(
        self, url: str, chargers: int, *, processes: int = 1, concurrency: int = 200,
        prefix: str = "bench-cp",
    ) -> None:  # fmt: skip
        self.processes = max(1, min(processes, chargers))
        share = -(-chargers // self.processes)
        self.children: list[subprocess.Popen[bytes]] = []
        for k in range(self.processes):
            first, count = k * share, min(share, chargers - k * share)
            argv = [sys.executable, __file__, "generate", url, prefix, str(first), str(count),
                    str(max(1, concurrency // self.processes))]  # fmt: skip
            self.children.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )

    @property
    def pids(self) -> list[int]:
        """The generator processes' ids."""
        return [child.pid for child in self.children]

    def _ask(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for child, command in zip(self.children, commands, strict=True):
            assert child.stdin is not None
            child.stdin.write(orjson.dumps(command) + b"\n")
            child.stdin.flush()
        answers = []
        for child in self.children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator {child.pid} exited ({child.wait()})")
            answer = orjson.loads(line)
            if "error" in answer:
                raise RuntimeError(f"load generator: {answer['error']}")
            answers.append(answer)
        return answers

    def connect(self) -> ConnectResult:
        """Open and boot every charger."""
        answers = self._ask([{"op": "connect"}] * self.processes)
        errors: dict[str, int] = {}
        for answer in answers:
            for name, count in answer["errors"].items():
                errors[name] = errors.get(name, 0) + count
        return ConnectResult(
            connected=sum(a["connected"] for a in answers),
            failed=sum(a["failed"] for a in answers),
            retries=sum(a["retries"] for a in answers),
            rejected=sum(a["rejected"] for a in answers),
            errors=errors,
            seconds=max(a["seconds"] for a in answers),
            cpu_s=sum(a["cpu_s"] for a in answers),
            handshake_ms=sorted(x for a in answers for x in a["handshake_ms"]),
            boot_ms=sorted(x for a in answers for x in a["boot_ms"]),
        )

    def run(self, rate: float, warmup_s: float, window_s: float) -> PhaseResult:
        """Offer ``rate`` CALLs/s in total for ``warmup_s + window_s``; the window measured."""
        commands = [
            {"op": "run", "rate": rate / self.processes, "warmup_s": warmup_s,
             "window_s": window_s, "offset": k / self.processes}
            for k in range(self.processes)
        ]  # fmt: skip
        answers = self._ask(commands)
        summed = {
            key: sum(a[key] for a in answers)
            for key in ("chargers", "offered", "answered", "call_errors", "unanswered", "closed",
                        "stale", "heartbeat", "meter_values", "meter_values_sent", "all_sent",
                        "all_answered", "all_meter_values_answered")
        }  # fmt: skip
        codes: dict[str, int] = {}
        seconds: dict[int, list[float]] = {}
        for answer in answers:
            for code, count in answer["error_codes"].items():
                codes[code] = codes.get(code, 0) + count
            for second, (calls, worst) in answer["timeline"].items():
                merged = seconds.setdefault(int(second), [0, 0.0])
                merged[0] += calls
                merged[1] = max(merged[1], worst)
        return PhaseResult(
            timeline=[seconds.get(k, [0, 0.0]) for k in range(max(seconds, default=-1) + 1)],
            rate=rate,
            window_s=window_s,
            span_s=max(a["span_s"] for a in answers),
            error_codes=codes,
            seconds=max(a["seconds"] for a in answers),
            cpu_s=sum(a["cpu_s"] for a in answers),
            gc_max_ms=max(a["gc"]["max_ms"] for a in answers),
            latency_ms=sorted(x for a in answers for xs in a["latency_ms"].values() for x in xs),
            by_action_ms={
                action: sorted(x for a in answers for x in a["latency_ms"][action])
                for action in ("heartbeat", "meter_values")
            },
            lateness_ms=sorted(x for a in answers for x in a["lateness_ms"]),
            **summed,
        )

    def close(self) -> dict[str, Any]:
        """Count the connections still open, close them and end the processes."""
        answers = self._ask([{"op": "close"}] * self.processes)
        for child in self.children:
            child.wait(timeout=60)
        return {
            "held": sum(a["held"] for a in answers),
            "closed_during_runs": sum(a["closed_during_runs"] for a in answers),
            "close_s": max(a["close_s"] for a in answers),
        }

    def kill(self) -> None:
        """Kill the processes still running."""
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def main(argv: list[str] | None = None) -> None:
    """``echo`` or ``generate`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    echo = sub.add_parser("echo", help="The bare websockets baseline server.")
    echo.add_argument("--port", type=int, required=True)
    gen = sub.add_parser("generate", help="One load generator process (commands on stdin).")
    gen.add_argument("url")
    gen.add_argument("prefix")
    gen.add_argument("first", type=int)
    gen.add_argument("count", type=int)
    gen.add_argument("concurrency", type=int)
    args = parser.parse_args(argv)
    raise_nofile()
    if args.mode == "echo":
        run_loop(echo_main(args.port))
    else:
        run_loop(generate_main(args))


if __name__ == "__main__":
    main()
