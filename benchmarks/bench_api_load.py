"""(i) The API under mixed load: 50 clients reading, ingesting and sending commands at once.

Ours: ``derim serve`` as its own process (SQLite in a temp dir, log level WARNING) with
**authentication on**: three keys made beforehand with ``derim keys create`` in its data
directory (admin for the set-up, viewer for the reads, operator for ingest and commands), so
every request pays a real key check; the per-key budget is raised so that no 429 is expected.
50 meters (one per client) are registered through ``POST /api/v1/devices`` and given one
reading each; two simulated OCPP 1.6 chargers (``derim.sim.ocpp_charger``, in this process)
connect to its central system and take the commands.

The load: 50 clients, each its own httpx client over one keep-alive connection, spread over two
generator processes (httpx costs ~1 ms of client CPU per request here, so one process would
measure itself). Each client loops, choosing per request: 60% reads (15% each of
``GET /api/v1/devices``, ``GET /api/v1/telemetry/{meter}`` of the client's last 300 s of readings,
``GET /api/v1/telemetry/{meter}/latest``, ``GET /api/v1/fleet/summary``), 30% ingest
(``POST /api/v1/telemetry`` of 10 readings of the client's own meter, each with a new
timestamp) and 10% commands (``POST /api/v1/control/{charger}``: ``set_power_limit`` 5-8 kW or a
soft ``reset``, expected 200 ``acknowledged``). First closed-loop (each client sends its next
request when the last one is answered) for 60 s (quick: 10 s), then paced at half of that
throughput for as long (latency at a load the server can carry). An error is any other status
than the expected one (200 for reads and commands, 202 for ingest), a command not
``acknowledged``, or a transport error/timeout.

Raw: ``raw_asgi_app.py`` (uvicorn, reads the body, answers 200 to GET and 202 to POST) driven by
the same generator and mix, closed-loop, for as long: the floor of HTTP on this machine with this
client. Afterwards, for ours: every meter's stored readings are counted back through the API and
compared with the readings accepted, every command answered is looked up by id
(``GET /api/v1/commands/{id}``) and each charger's command list is counted
(``GET /api/v1/devices/{id}/commands``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Figure,
    ServerProcess,
    arg_parser,
    child_env,
    derim_server,
    emit,
    free_port,
    machine_info,
    percentile,
    progress,
    raw_server,
    run_loop,
)
from derim.sim.ocpp_charger import SimulatedCharger

BENCH = "i_api_load"
T = TypeVar("T")
BASE_TIME = datetime(2025, 1, 6, tzinfo=UTC)
"""Reading ``tick`` of a meter is at ``BASE_TIME + tick`` seconds."""
SEED_TICK = 0
PACED_FIRST_TICK = 2_000_000
"""Ticks of the paced phase start here, far past anything the closed-loop phase writes."""
BATCH = 10
RANGE_S = 300
CHARGERS = ("load-cp-1", "load-cp-2")
KINDS: tuple[str, ...] = ("devices", "range", "latest", "summary", "ingest", "command")
WEIGHTS = (15, 15, 15, 15, 30, 10)
READ_KINDS = frozenset({"devices", "range", "latest", "summary"})
REQUEST_TIMEOUT_S = 60.0
LATE_MS = 50.0
"""A paced request starting this much after its slot counts as late."""
RATE_LIMIT = "1000000"
"""Per-key requests/s and burst for the run: far above the load, so no 429 is expected."""
READY_TIMEOUT_S = 120.0


def meter_id(index: int) -> str:
    """The meter client ``index`` writes to."""
    return f"load-meter-{index:03d}"


def iso(tick: int) -> str:
    """The ISO 8601 UTC timestamp of ``tick``."""
    return (BASE_TIME + timedelta(seconds=tick)).strftime("%Y-%m-%dT%H:%M:%SZ")


def meter_reading(meter: str, tick: int, rng: random.Random) -> dict[str, Any]:
    """One meter reading at ``tick`` (six fields)."""
    power = rng.uniform(-6.0, 4.0)
    voltage = rng.uniform(226.0, 234.0)
    return {
        "device_id": meter,
        "timestamp": iso(tick),
        "power_kw": round(power, 3),
        "voltage_v": round(voltage, 3),
        "current_a": round(abs(power) * 1000 / voltage / 3, 3),
        "frequency_hz": round(rng.uniform(49.95, 50.05), 3),
        "energy_import_kwh": round(500 + tick * 0.001, 3),
        "power_factor": round(rng.uniform(0.9, 1.0), 3),
    }


# ---- the load generator (runs in its own processes) ----------------------------------------


@dataclass
class Spec:
    """What one generator process does."""

    base_url: str
    clients: list[int]
    meters: int
    duration_s: float
    first_tick: int
    interval_s: float
    """Seconds between one client's requests (paced); 0: closed loop."""
    raw: bool
    tokens: dict[str, str]
    seed: int


@dataclass
class Tally:
    """Per request kind: latencies (ms) of good answers, errors and a few of their messages."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    accepted: dict[str, int] = field(default_factory=dict)
    """Readings answered 202 per meter."""
    commands: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHARGERS})
    """Ids of the commands answered, per charger."""
    commands_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHARGERS, 0))
    late: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def error(self, kind: str, message: str) -> None:
        """Count an error of ``kind``, keeping the first few messages."""
        self.errors[kind] += 1
        if len(self.samples[kind]) < 5:
            self.samples[kind].append(message[:300])


async def one_client(index: int, spec: Spec, http: httpx.AsyncClient, tally: Tally) -> None:
    """Run one client's loop until the phase ends."""
    rng = random.Random(spec.seed * 10_000 + index)
    meter = meter_id(index)
    tick = spec.first_tick
    read_headers = {"authorization": f"Bearer {spec.tokens['viewer']}"} if not spec.raw else {}
    write_headers = {"authorization": f"Bearer {spec.tokens['operator']}"} if not spec.raw else {}
    write_headers["content-type"] = "application/json"
    started = time.monotonic()
    deadline = started + spec.duration_s
    slot = started + rng.uniform(0, spec.interval_s)
    commands = 0
    while True:
        now = time.monotonic()
        if spec.interval_s:
            if slot >= deadline:
                return
            if slot > now:
                await asyncio.sleep(slot - now)
            elif (now - slot) * 1000 > LATE_MS:
                tally.late += 1
            slot += spec.interval_s
        elif now >= deadline:
            return
        kind = rng.choices(KINDS, WEIGHTS)[0]
        method, body, headers, expect = "GET", None, read_headers, 200
        if kind == "devices":
            path = "/api/v1/devices"
        elif kind == "range":
            first = max(spec.first_tick, tick - RANGE_S)
            path = f"/api/v1/telemetry/{meter}?start={iso(first)}&end={iso(tick + 1)}"
        elif kind == "latest":
            path = f"/api/v1/telemetry/{meter_id(rng.randrange(spec.meters))}/latest"
        elif kind == "summary":
            path = "/api/v1/fleet/summary"
        elif kind == "ingest":
            method, headers, expect, path = "POST", write_headers, 202, "/api/v1/telemetry"
            body = orjson.dumps([meter_reading(meter, tick + i, rng) for i in range(BATCH)])
            tick += BATCH
        else:
            charger = CHARGERS[commands % len(CHARGERS)]
            command: dict[str, Any] = (
                {"command": "set_power_limit", "value": rng.choice((5, 6, 7, 8))}
                if commands % 2 == 0
                else {"command": "reset"}
            )
            commands += 1
            tally.commands_sent[charger] += 1
            method, headers, path = "POST", write_headers, f"/api/v1/control/{charger}"
            body = orjson.dumps(command)
            expect = 202 if spec.raw else 200
        sent = time.perf_counter()
        try:
            response = await http.request(method, spec.base_url + path, content=body,
                                          headers=headers)  # fmt: skip
        except httpx.HTTPError as exc:
            tally.error(kind, f"{type(exc).__name__}: {exc}")
            continue
        elapsed_ms = (time.perf_counter() - sent) * 1000
        if response.status_code != expect:
            tally.error(kind, f"{method} {path}: {response.status_code} {response.text}")
            continue
        if not spec.raw and kind == "command":
            record = response.json()
            if record.get("status") != "acknowledged":
                tally.error(kind, f"{path}: {record.get('status')} {record.get('message')}")
                continue
            tally.commands[charger].append(record["command_id"])
        if not spec.raw and kind == "ingest":
            accepted = int(response.json()["accepted"])
            tally.accepted[meter] = tally.accepted.get(meter, 0) + accepted
        tally.latencies[kind].append(elapsed_ms)


async def generate(spec: Spec, queue: Queue[Any], go: Event) -> Tally:
    """Open every client's connection, say ready, wait for the start, run the phase."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) for _ in spec.clients]
    tally = Tally()
    try:
        await asyncio.gather(*(http.get(spec.base_url + "/health") for http in clients))
        queue.put(("ready", os.getpid()))
        if not await asyncio.to_thread(go.wait, READY_TIMEOUT_S):
            raise RuntimeError("no start signal")
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(
            *(
                one_client(i, spec, http, tally)
                for i, http in zip(spec.clients, clients, strict=True)
            )
        )
        tally.cpu_s, tally.wall_s = time.process_time() - cpu, time.monotonic() - wall
    finally:
        for http in clients:
            await http.aclose()
    return tally


def generator_main(spec: Spec, queue: Queue[Any], go: Event) -> None:
    """Entry point of a generator process: its tally (or its failure) goes to ``queue``."""
    try:
        tally = run_loop(generate(spec, queue, go))
        queue.put(("done", tally))
    except BaseException as exc:
        queue.put(("failed", f"{type(exc).__name__}: {exc}"))
        raise


# ---- the orchestration ---------------------------------------------------------------------


@dataclass
class Phase:
    """The merged result of one phase."""

    name: str
    clients: int
    duration_s: float
    tally: Tally
    generator_cpu: list[float]
    """CPU share of a core used by each generator process."""
    server_cpu: float | None
    """CPU share of a core used by the server during the phase."""

    @property
    def requests(self) -> int:
        """Requests answered as expected."""
        return sum(len(v) for v in self.tally.latencies.values())

    @property
    def errors(self) -> int:
        """Requests answered otherwise, or not at all."""
        return sum(self.tally.errors.values())

    @property
    def rate(self) -> float:
        """Requests per second, answered as expected or not."""
        return (self.requests + self.errors) / self.duration_s

    def all_latencies(self) -> list[float]:
        """Every good answer's latency (ms)."""
        return [v for values in self.tally.latencies.values() for v in values]

    def summary(self) -> dict[str, object]:
        """Per kind and overall: count, errors, p50/p99 (ms); rate, CPU."""
        kinds: dict[str, object] = {}
        for kind in KINDS:
            values = self.tally.latencies[kind]
            kinds[kind] = {
                "ok": len(values),
                "errors": self.tally.errors[kind],
                "p50_ms": round(percentile(values, 50), 2) if values else None,
                "p99_ms": round(percentile(values, 99), 2) if values else None,
                "max_ms": round(max(values), 1) if values else None,
                "error_samples": self.tally.samples[kind],
            }
        overall = self.all_latencies()
        return {
            "clients": self.clients,
            "duration_s": self.duration_s,
            "requests_per_s": round(self.rate, 1),
            "ok": self.requests,
            "errors": self.errors,
            "p50_ms": round(percentile(overall, 50), 2) if overall else None,
            "p99_ms": round(percentile(overall, 99), 2) if overall else None,
            "late_starts": self.tally.late,
            "generator_cpu_share": [round(c, 2) for c in self.generator_cpu],
            "server_cpu_share": None if self.server_cpu is None else round(self.server_cpu, 2),
            "by_kind": kinds,
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def merge(tallies: list[Tally]) -> Tally:
    """One tally of several processes."""
    total = Tally()
    for tally in tallies:
        for kind in KINDS:
            total.latencies[kind] += tally.latencies[kind]
            total.errors[kind] += tally.errors[kind]
            total.samples[kind] += tally.samples[kind][: 5 - len(total.samples[kind])]
        for meter, count in tally.accepted.items():
            total.accepted[meter] = total.accepted.get(meter, 0) + count
        for charger in CHARGERS:
            total.commands[charger] += tally.commands[charger]
            total.commands_sent[charger] += tally.commands_sent[charger]
        total.late += tally.late
    return total


async def run_phase(
    name: str,
    server: ServerProcess,
    *,
    clients: int,
    procs: int,
    duration_s: float,
    first_tick: int = 0,
    interval_s: float = 0.0,
    raw: bool = False,
    tokens: dict[str, str] | None = None,
    seed: int = 1,
) -> Phase:
    """Run one phase with ``procs`` generator processes sharing ``clients``."""
    context = multiprocessing.get_context("spawn")
    queue: Queue[Any] = context.Queue()
    go = context.Event()
    indexes = list(range(clients))
    specs = [
        Spec(
            server.url,
            indexes[i::procs],
            clients,
            duration_s,
            first_tick,
            interval_s,
            raw,
            tokens or {},
            seed,
        )
        for i in range(procs)
    ]
    processes = [
        context.Process(target=generator_main, args=(spec, queue, go), daemon=True)
        for spec in specs
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            message = await asyncio.to_thread(queue.get, True, READY_TIMEOUT_S)
            if message[0] != "ready":
                raise RuntimeError(f"generator failed before the start: {message[1]}")
        server_cpu = cpu_seconds(server.pid)
        started = time.monotonic()
        go.set()
        tallies = []
        for _ in processes:
            message = await asyncio.to_thread(queue.get, True, duration_s + READY_TIMEOUT_S)
            if message[0] != "done":
                raise RuntimeError(f"generator failed: {message[1]}")
            tallies.append(message[1])
        elapsed = time.monotonic() - started
        server_share = (cpu_seconds(server.pid) - server_cpu) / elapsed
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
    phase = Phase(
        name,
        clients,
        duration_s,
        merge(tallies),
        [t.cpu_s / t.wall_s for t in tallies if t.wall_s],
        server_share,
    )
    s = phase.summary()
    print(
        f"  {name}: {s['requests_per_s']} req/s, {s['ok']} ok, {s['errors']} errors, "
        f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; generator CPU "
        f"{s['generator_cpu_share']}, server CPU {s['server_cpu_share']}",
        flush=True,
    )
    for kind, data in s["by_kind"].items():  # type: ignore[attr-defined]
        print(f"    {kind:<8} {data}", flush=True)
    return phase


def create_key(data_dir: Path, role: str) -> str:
    """A new API key of ``role`` made with the CLI in ``data_dir``; its token."""
    done = subprocess.run(
        [sys.executable, "-m", "derim.cli", "keys", "create", "--role", role, "--name",
         f"load-{role}"],
        env=child_env(DERIM_DATA_DIR=str(data_dir), DERIM_LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


async def gather_limited(jobs: list[Awaitable[T]], limit: int) -> list[T]:
    """Await ``jobs`` at most ``limit`` at a time; their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with semaphore:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


def api(base_url: str, token: str) -> httpx.AsyncClient:
    """A client of the set-up and the checks."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=8),
    )


async def set_up(http: httpx.AsyncClient, meters: int) -> None:
    """Register the meters and give each one reading (so ``latest`` has an answer)."""

    async def register(index: int) -> None:
        body = {"id": meter_id(index), "device_type": "meter"}
        response = await http.post("/api/v1/devices", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"register {body['id']}: {response.status_code} {response.text}")

    await gather_limited([register(i) for i in range(meters)], 8)
    rng = random.Random(0)
    seed = [meter_reading(meter_id(i), SEED_TICK, rng) for i in range(meters)]
    response = await http.post("/api/v1/telemetry", content=orjson.dumps(seed))
    if response.status_code != 202:
        raise RuntimeError(f"seed readings: {response.status_code} {response.text}")


async def wait_for_chargers(http: httpx.AsyncClient, chargers: list[SimulatedCharger]) -> None:
    """Until every charger has booted and the server lists it as connected."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for charger in chargers:
        await asyncio.wait_for(charger.connected.wait(), READY_TIMEOUT_S)
        while True:
            response = await http.get(f"/api/v1/devices/{charger.charge_point_id}")
            if response.status_code == 200 and (response.json().get("charger") or {}).get(
                "connected"
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{charger.charge_point_id}: {response.text[:300]}")
            await asyncio.sleep(0.2)


async def stored_readings(http: httpx.AsyncClient, meter: str) -> int:
    """How many readings the server holds for ``meter`` (every page of the whole range)."""
    total = 0
    params = {"start": iso(-86_400), "end": iso(PACED_FIRST_TICK * 2), "limit": "100000",
              "fields": "power_kw"}  # fmt: skip
    while True:
        response = await http.get(f"/api/v1/telemetry/{meter}", params=params)
        response.raise_for_status()
        page = response.json()
        total += int(page["count"])
        if not page.get("next_cursor"):
            return total
        params["cursor"] = page["next_cursor"]


async def listed_commands(http: httpx.AsyncClient, charger: str) -> int:
    """How many command records ``GET /api/v1/devices/{id}/commands`` lists (every page)."""
    total = 0
    params: dict[str, str] = {"limit": "1000"}
    while True:
        response = await http.get(f"/api/v1/devices/{charger}/commands", params=params)
        response.raise_for_status()
        page = response.json()
        total += len(page)
        if len(page) < 1000:
            return total
        params["before"] = page[-1]["history"][0][1]


async def check_command(http: httpx.AsyncClient, command_id: str) -> str | None:
    """None if the command's record is there and acknowledged, else what is wrong."""
    response = await http.get(f"/api/v1/commands/{command_id}")
    if response.status_code != 200:
        return f"{command_id}: {response.status_code}"
    status = response.json()["status"]
    return None if status == "acknowledged" else f"{command_id}: {status}"


async def verify(http: httpx.AsyncClient, meters: int, phases: list[Phase]) -> dict[str, object]:
    """Readings stored against those accepted; command records against commands answered."""
    accepted = merge([p.tally for p in phases]).accepted
    stored = await gather_limited([stored_readings(http, meter_id(i)) for i in range(meters)], 4)
    expected = [1 + accepted.get(meter_id(i), 0) for i in range(meters)]
    missing = sum(max(0, e - s) for e, s in zip(expected, stored, strict=True))
    extra = sum(max(0, s - e) for e, s in zip(expected, stored, strict=True))
    ids = [i for p in phases for ids in p.tally.commands.values() for i in ids]
    problems = [p for p in await gather_limited([check_command(http, c) for c in ids], 8) if p]
    listed = {c: await listed_commands(http, c) for c in CHARGERS}
    sent = {c: sum(p.tally.commands_sent[c] for p in phases) for c in CHARGERS}
    health = (await http.get("/health")).json()
    return {
        "readings_accepted": sum(expected),
        "readings_stored": sum(stored),
        "readings_missing": missing,
        "readings_extra": extra,
        "commands_answered": len(ids),
        "commands_without_good_record": len(problems),
        "command_record_problems": problems[:10],
        "commands_sent": sent,
        "commands_listed": listed,
        "ingest_counters": health["ingest"],
        "ocpp_counters": health["ocpp"],
    }


async def run_ours(
    server: ServerProcess,
    tokens: dict[str, str],
    *,
    ocpp_port: int,
    clients: int,
    procs: int,
    duration_s: float,
    paced_share: float,
) -> tuple[list[Phase], dict[str, object]]:
    """Set up, run the closed-loop and the paced phase against ours, then check the data."""
    chargers = [SimulatedCharger(cp, f"ws://127.0.0.1:{ocpp_port}/ocpp") for cp in CHARGERS]
    tasks = [asyncio.create_task(c.run(), name=c.charge_point_id) for c in chargers]
    try:
        async with api(server.url, tokens["admin"]) as admin:
            with progress(f"registering {clients} meters, connecting {len(chargers)} chargers"):
                await set_up(admin, clients)
                await wait_for_chargers(admin, chargers)
            closed = await run_phase(
                "ours, closed loop", server, clients=clients, procs=procs,
                duration_s=duration_s, first_tick=SEED_TICK + 1, tokens=tokens, seed=1,
            )  # fmt: skip
            rate = paced_share * closed.rate
            paced = await run_phase(
                f"ours, paced at {rate:.0f} req/s", server, clients=clients, procs=procs,
                duration_s=duration_s, first_tick=PACED_FIRST_TICK, interval_s=clients / rate,
                tokens=tokens, seed=2,
            )  # fmt: skip
            with progress("checking stored readings and command records"):
                checks = await verify(admin, clients, [closed, paced])
            checks["paced_rate_offered"] = round(rate, 1)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return [closed, paced], checks


def p(values: list[float], pct: float) -> float:
    """A percentile of ``values``, 0 when there are none."""
    return percentile(values, pct) if values else 0.0


def figures_of(raw: Phase, closed: Phase, paced: Phase, checks: dict[str, Any]) -> list[Figure]:
    """The reported figures."""
    n = closed.clients
    mix = "60% reads, 30% ingest, 10% commands"
    raw_label = "minimal uvicorn ASGI app, same generator and mix, closed loop"
    stat = f"1 run of {closed.duration_s:.0f} s"

    def figure(**kwargs: Any) -> Figure:
        return Figure(bench=BENCH, stat=stat, **kwargs)

    figures = [
        figure(
            metric=f"(i) {n} clients closed loop, requests/s ({mix})",
            unit="req/s",
            ours=closed.rate,
            baseline=raw.rate,
            baseline_label=raw_label,
            note=f"generator CPU {closed.summary()['generator_cpu_share']}, server CPU "
            f"{closed.server_cpu:.2f} of a core",
        ),
        figure(
            metric="(i) errors, closed loop + paced (non-2xx, transport)",
            unit="",
            ours=closed.errors + paced.errors,
            baseline=raw.errors,
            baseline_label=raw_label,
            target="0",
            met=closed.errors + paced.errors == 0,
            no_ratio=True,
            note="; ".join(f"{k}: {s[0]}" for k in KINDS for s in [closed.tally.samples[k]] if s),
        ),
    ]
    for label, ours_values, raw_values in [
        ("all requests", closed.all_latencies(), raw.all_latencies()),
        *[(k, closed.tally.latencies[k], raw.tally.latencies[k]) for k in KINDS],
    ]:
        for pct in (50, 99):
            figures.append(
                figure(
                    metric=f"(i) closed loop p{pct}, {label}",
                    unit="ms",
                    ours=p(ours_values, pct),
                    baseline=p(raw_values, pct) if raw_values else None,
                    baseline_label=raw_label,
                    note=f"{len(ours_values)} answered" if pct == 50 else "",
                )
            )
    rate = checks["paced_rate_offered"]
    for label, values in [
        ("all requests", paced.all_latencies()),
        *[(k, paced.tally.latencies[k]) for k in KINDS],
    ]:
        for pct in (50, 99):
            figures.append(
                figure(
                    metric=f"(i) paced at {rate:.0f} req/s p{pct}, {label}",
                    unit="ms",
                    ours=p(values, pct),
                    baseline=None,
                    baseline_label="absolute (no baseline)",
                    note=f"{len(values)} answered" if pct == 50 else "",
                )
            )
    figures += [
        figure(
            metric="(i) readings accepted but not stored",
            unit="",
            ours=checks["readings_missing"],
            baseline=None,
            baseline_label=f"{checks['readings_accepted']} accepted, "
            f"{checks['readings_stored']} stored",
            target="0",
            met=checks["readings_missing"] == 0 and checks["readings_extra"] == 0,
        ),
        figure(
            metric="(i) commands answered without an acknowledged record",
            unit="",
            ours=checks["commands_without_good_record"],
            baseline=None,
            baseline_label=f"{checks['commands_answered']} answered, listed "
            f"{checks['commands_listed']}",
            target="0",
            met=checks["commands_without_good_record"] == 0,
        ),
    ]
    return figures


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--clients", type=int, default=50, help="Concurrent clients.")
    parser.add_argument("--procs", type=int, default=2, help="Generator processes.")
    parser.add_argument("--duration", type=float, help="Seconds per phase (60; quick 10).")
    parser.add_argument("--paced-share", type=float, default=0.5,
                        help="Paced phase rate as a share of the closed-loop rate.")  # fmt: skip
    parser.add_argument("--no-raw", action="store_true", help="Skip the raw baseline.")
    parser.add_argument(
        "--no-auth", action="store_true", help="Diagnostic: the server without key checks."
    )
    args = parser.parse_args(argv)
    duration = args.duration or (10.0 if args.quick else 60.0)
    clients, procs = args.clients, max(1, min(args.procs, args.clients))
    started = time.monotonic()
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="derim-bench-i-") as tmp:
        root = Path(tmp)
        raw = Phase("raw", clients, duration, Tally(), [], None)
        if not args.no_raw:
            with raw_server(root, free_port()) as raw_app:
                raw = asyncio.run(
                    run_phase("raw, closed loop", raw_app, clients=clients, procs=procs,
                              duration_s=duration, raw=True)
                )  # fmt: skip
        data_dir = root / "derim"
        data_dir.mkdir()
        with progress("creating API keys with the CLI"):
            tokens = {role: create_key(data_dir, role) for role in ("admin", "operator", "viewer")}
        ocpp_port = free_port()
        server = derim_server(
            data_dir,
            free_port(),
            ocpp_port=str(ocpp_port),
            rate_limit_per_s=RATE_LIMIT,
            rate_limit_burst=RATE_LIMIT,
            auth_enabled="false" if args.no_auth else "true",
        )
        with server:
            (closed, paced), checks = asyncio.run(
                run_ours(server, tokens, ocpp_port=ocpp_port, clients=clients, procs=procs,
                         duration_s=duration, paced_share=args.paced_share)
            )  # fmt: skip
            log_tail = server.log_tail(40)
    figures = figures_of(raw, closed, paced, checks)
    details = {
        "raw": raw.summary(),
        "ours_closed": closed.summary(),
        "ours_paced": paced.summary(),
        "checks": checks,
        "server_log_tail": log_tail,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    emit(figures, args, details)
    print(f"\nchecks: {checks}")
    print(f"took {details['seconds']} s; load average at the end {details['loadavg_at_end']}")


if __name__ == "__main__":
    main()
