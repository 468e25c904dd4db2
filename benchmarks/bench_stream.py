"""(k) Live streaming: end-to-end latency from a device reading to WebSocket clients.

Ours: ``derim serve`` (own process, SQLite in a temp dir) with 1,000 registered meters; a
publisher posts one reading of every meter each second (one 1,000-record ``POST
/api/v1/telemetry``, timestamps = the time of posting); N clients, each its own WebSocket on
``/api/v1/stream`` without a filter (every reading), spread over two client processes. Latency =
the client's receive time minus the reading's timestamp (one machine, one clock), per message;
p50/p99 over all clients for 20 s (quick: 8 s) at each N, N stepped up; the publisher runs 5 s
before the first clients connect and each client's first second is not counted.

Raw: a bare ``websockets`` server (own process, same loop and library, no compression like ours
by default) that builds a message of the same size and shape every second and broadcasts it to
the same clients; its latency is the floor of one process pushing that much over WebSockets here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, arg_parser, derim_server, emit, free_port, machine_info, percentile

BENCH = "stream"
DEVICES = 1_000
CLIENT_PROCESSES = 2
TARGET_CLIENTS = 500
TARGET_P99_MS = 250.0
WARM_UP_S = 1.0
"""Each client's first second is not counted (connection set-up, the first message)."""
PUBLISHER_WARM_UP_S = 5.0


def fleet_message(now: datetime) -> list[dict[str, object]]:
    """One reading of every meter at ``now``."""
    stamp = now.isoformat()
    return [
        {"device_id": f"m{i:04d}", "timestamp": stamp, "power_kw": 1.5, "voltage_v": 230.1}
        for i in range(DEVICES)
    ]


def latency_ms(message: bytes, received: float) -> float | None:
    """Receive time minus the first reading's timestamp (ms), or None for other messages."""
    start = message.find(b'"timestamp":"')
    if start < 0 or not message.startswith(b'{"type":"telemetry"'):
        return None
    end = message.find(b'"', start + 13)
    stamp = datetime.fromisoformat(message[start + 13 : end].decode().replace("Z", "+00:00"))
    return 1000 * (received - stamp.timestamp())


async def run_clients(url: str, count: int, duration_s: float) -> tuple[list[float], int, int]:
    """``count`` WebSocket clients for ``duration_s``: latencies, connections made, gaps seen."""
    latencies: list[float] = []
    gaps = 0
    connected = 0

    async def one() -> None:
        nonlocal gaps, connected
        async with connect(url, max_size=None, open_timeout=60) as ws:
            connected += 1
            opened = time.monotonic()
            deadline = opened + duration_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(decode=False), left)
                except TimeoutError:
                    break
                value = latency_ms(raw, time.time())
                if value is not None and time.monotonic() - opened > WARM_UP_S:
                    latencies.append(value)
                elif raw.startswith(b'{"type":"gap"'):
                    gaps += 1

    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return latencies, connected, gaps


def client_process(url: str, count: int, duration_s: float, out: Queue[object]) -> None:
    """A process running ``count`` clients; puts its results on ``out``."""
    out.put(asyncio.run(run_clients(url, count, duration_s)))


def measure(url: str, clients: int, duration_s: float) -> tuple[list[float], int, int]:
    """Latencies, connections and gaps of ``clients`` clients over the client processes."""
    out: Queue[object] = multiprocessing.Queue()
    share = [
        clients // CLIENT_PROCESSES + (i < clients % CLIENT_PROCESSES)
        for i in range(CLIENT_PROCESSES)
    ]
    processes = [
        multiprocessing.Process(target=client_process, args=(url, n, duration_s, out))
        for n in share
    ]
    for process in processes:
        process.start()
    latencies: list[float] = []
    connected = gaps = 0
    for _ in processes:
        got, made, lost = out.get(timeout=duration_s + 180)  # type: ignore[misc]
        latencies += got
        connected += made
        gaps += lost
    for process in processes:
        process.join(30)
    return latencies, connected, gaps


async def publish_forever(base: str) -> None:
    """Post one reading of every meter each second."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while True:
            began = time.monotonic()
            body = orjson.dumps(fleet_message(datetime.now(UTC)))
            response = await http.post(
                "/api/v1/telemetry", content=body, headers={"Content-Type": "application/json"}
            )
            response.raise_for_status()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


def publisher_process(base: str) -> None:
    """The publisher in its own process."""
    asyncio.run(publish_forever(base))


def raw_server_process(port: int) -> None:
    """A bare websockets server broadcasting a fleet-sized telemetry message every second."""

    async def main() -> None:
        async def hold(ws: object) -> None:
            await ws.wait_closed()  # type: ignore[attr-defined]

        async with serve(hold, "127.0.0.1", port, max_size=None, compression=None) as server:
            while True:
                message = orjson.dumps(
                    {"type": "telemetry", "records": fleet_message(datetime.now(UTC))}
                ).decode()
                broadcast(server.connections, message)
                await asyncio.sleep(1.0)

    asyncio.run(main())


def sweep(
    url: str, levels: list[int], duration_s: float, label: str
) -> dict[int, tuple[float, float, int, int, int]]:
    """p50, p99, messages, connections and gaps at each client count."""
    results = {}
    for clients in levels:
        latencies, connected, gaps = measure(url, clients, duration_s)
        if not latencies:
            print(f"  {label} {clients} clients: no messages", flush=True)
            continue
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        results[clients] = (p50, p99, len(latencies), connected, gaps)
        print(
            f"  {label} {clients} clients ({connected} connected): p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms, {len(latencies)} messages, {gaps} gaps",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    args = arg_parser(__doc__ or "").parse_args(argv)
    duration = 8.0 if args.quick else 20.0
    levels = [100, 500] if args.quick else [100, 250, 500, 750, 1000]
    raw_port = free_port()
    raw = multiprocessing.Process(target=raw_server_process, args=(raw_port,), daemon=True)
    raw.start()
    time.sleep(1.0)
    try:
        raw_results = sweep(f"ws://127.0.0.1:{raw_port}", levels, duration, "raw")
    finally:
        raw.terminate()
    with (
        tempfile.TemporaryDirectory(prefix="derim-bench-k-") as tmp,
        derim_server(
            Path(tmp), free_port(), ocpp_enabled="false", stream_max_clients="5000"
        ) as server,
    ):
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(DEVICES):
                http.post(
                    "/api/v1/devices", json={"id": f"m{i:04d}", "device_type": "meter"}
                ).raise_for_status()
        publisher = multiprocessing.Process(
            target=publisher_process, args=(server.url,), daemon=True
        )
        publisher.start()
        time.sleep(PUBLISHER_WARM_UP_S)
        try:
            ours = sweep(
                server.url.replace("http", "ws") + "/api/v1/stream", levels, duration, "ours"
            )
        finally:
            publisher.terminate()
    figures = []
    for clients in levels:
        if clients not in ours:
            continue
        p50, p99, messages, connected, gaps = ours[clients]
        base = raw_results.get(clients)
        held = clients == TARGET_CLIENTS
        figures.append(
            Figure(BENCH, f"(k) reading to WebSocket client p99, {clients} clients", "ms", p99,
                   None if base is None else base[1], "bare websockets broadcast, same clients",
                   f"{messages} messages in {duration:.0f} s",
                   target=f"p99 <= {TARGET_P99_MS:.0f} ms" if held else "",
                   met=p99 <= TARGET_P99_MS and connected == clients if held else None,
                   note=f"p50 {p50:.0f} ms; {connected} connected; {gaps} gap notices"),
        )  # fmt: skip
    served = [c for c in ours if ours[c][1] <= TARGET_P99_MS and ours[c][3] == c]
    figures.append(
        Figure(BENCH, "(k) stream clients served with p99 <= 250 ms", "clients",
               max(served, default=0), None, "", f"levels {levels}",
               target=f">= {TARGET_CLIENTS}", met=max(served, default=0) >= TARGET_CLIENTS),
    )  # fmt: skip
    emit(figures, args, {"levels": levels, "machine": machine_info()})


if __name__ == "__main__":
    main()
