"""(f) The polling engine against 1,000 simulated SunSpec inverters served by another process.

Ours: one ``SunSpecAdapter`` per device (discovery, then one model-103 read per poll, decoded and
validated into a canonical reading), devices behind 5 gateways sharing one connection and one
``LinePoller`` each, as ``AdapterManager`` runs them. Raw: one pymodbus client per gateway
reading the same 52 registers from each unit in a tight loop. Both run on uvloop when it is
installed, as ``derim serve`` does. Measured: the request rate unpaced (interval ~0) as a share
of raw; at a 1 s cycle, the p99 lateness of poll starts against their schedule; and the same
with one dead device (accepts connections, never answers) among them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence

from pymodbus.client import AsyncModbusTcpClient

from _common import BENCH_DIR, Figure, arg_parser, emit, median, percentile, repeats, run_loop
from derim.adapters.base import Backoff, PollSettings
from derim.adapters.line import LinePoller
from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.models.common import DeviceType
from derim.models.telemetry import DERTelemetry

PER_GATEWAY = 200
INVERTER_BLOCK = (70, 52)
"""Address and length of model 103 (header included) in the farm's map."""


class TimedAdapter(SunSpecAdapter):
    """Notes when each poll starts, to measure lateness against the device's own schedule."""

    def __init__(self, *args: object, warmup_until: float, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.warmup_until = warmup_until
        self.offsets: list[float] = []
        """Start of poll k minus k intervals, for polls after the warm-up."""
        self.count = 0

    async def read_once(self) -> Sequence[DERTelemetry]:
        now = asyncio.get_running_loop().time()
        if now > self.warmup_until:
            self.offsets.append(now - self.count * self.settings.interval_s)
        self.count += 1
        return await super().read_once()

    def lateness(self) -> list[float]:
        """Seconds each poll started after the most punctual one of this device's schedule."""
        if not self.offsets:
            return []
        on_time = min(self.offsets)
        return [offset - on_time for offset in self.offsets]


class Counter:
    """A publish sink that only counts."""

    def __init__(self) -> None:
        self.records = 0

    async def __call__(self, records: Sequence[DERTelemetry]) -> None:
        self.records += len(records)


def start_farm(devices: int) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    """The simulated devices in their own process."""
    farm = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_sunspec_farm.py"), "--devices", str(devices),
         "--per-gateway", str(PER_GATEWAY)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert farm.stdout is not None
    return farm, json.loads(farm.stdout.readline())


async def raw_rate(gateways: list[int], devices: int, seconds: float) -> float:
    """Requests/s of plain pymodbus clients, one per gateway, looping over their units."""

    async def loop(port: int, units: range) -> int:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
        await client.connect()
        done, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            for unit in units:
                response = await client.read_holding_registers(
                    INVERTER_BLOCK[0], count=INVERTER_BLOCK[1], device_id=unit
                )
                assert not response.isError()
                done += 1
        client.close()
        return done

    started = time.perf_counter()
    counts = await asyncio.gather(
        *(
            loop(port, range(1, min(PER_GATEWAY, devices - i * PER_GATEWAY) + 1))
            for i, port in enumerate(gateways)
        )
    )
    return sum(counts) / (time.perf_counter() - started)


async def run_ours(
    gateways: list[int], devices: int, interval_s: float, seconds: float, dead_port: int | None
) -> tuple[float, list[float], int]:
    """Polls/s (after warm-up), lateness samples and published records of one run."""
    loop = asyncio.get_running_loop()
    warmup_s = 5.0
    samples: list[float] = []
    settings = PollSettings(interval_s=interval_s, timeout_s=1.0, backoff=Backoff(1.0, 5.0))
    sink = Counter()
    adapters: list[TimedAdapter] = []
    lines: list[tuple[LinePoller, list[TimedAdapter]]] = []
    for i, port in enumerate(gateways):
        transport = ModbusTransport.tcp("127.0.0.1", port, timeout_s=1.0)
        line = LinePoller(transport.key, sink)
        members = [
            TimedAdapter(f"pv-{port}-{unit}", DeviceType.SOLAR_PV, transport, unit, settings,
                         warmup_until=loop.time() + warmup_s)
            for unit in range(1, min(PER_GATEWAY, devices - i * PER_GATEWAY) + 1)
        ]  # fmt: skip
        lines.append((line, members))
    if dead_port is not None:
        dead = ModbusTransport.tcp("127.0.0.1", dead_port, timeout_s=1.0)
        lines.append((LinePoller(dead.key, sink), [
            TimedAdapter("dead", DeviceType.SOLAR_PV, dead, 1, settings, warmup_until=float("inf"))
        ]))  # fmt: skip
    for line, members in lines:
        for adapter in members:
            line.add(adapter)
        adapters += members
    await asyncio.sleep(warmup_s)
    before = sink.records
    await asyncio.sleep(seconds)
    rate = (sink.records - before) / seconds
    for line, members in lines:
        for adapter in members:
            await line.remove(adapter)
    for adapter in adapters:
        adapter.transport.close()
        samples += adapter.lateness()
    return rate, samples, sink.records


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and print the figures."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--devices", type=int, default=1000)
    args: argparse.Namespace = parser.parse_args(argv)
    seconds = 10.0 if args.quick else 30.0
    farm, ports = start_farm(args.devices)
    gateways = list(ports["gateways"])  # type: ignore[call-overload]
    dead_port = int(ports["dead"])  # type: ignore[call-overload]
    try:
        raw_runs, unpaced_runs, p99_runs, p99_dead_runs, paced_rates = [], [], [], [], []
        for run in range(repeats(args, quick=1, full=3)):
            raw_runs.append(run_loop(raw_rate(gateways, args.devices, seconds / 2)))
            unpaced, _, _ = run_loop(run_ours(gateways, args.devices, 1e-4, seconds / 2, None))
            unpaced_runs.append(unpaced)
            rate, lateness, _ = run_loop(run_ours(gateways, args.devices, 1.0, seconds, None))
            paced_rates.append(rate)
            p99_runs.append(percentile(lateness, 99) * 1000)
            _, lateness_dead, _ = run_loop(
                run_ours(gateways, args.devices, 1.0, seconds, dead_port)
            )
            p99_dead_runs.append(percentile(lateness_dead, 99) * 1000)
            print(
                f"  run {run + 1}: raw {raw_runs[-1]:,.0f} req/s, ours unpaced "
                f"{unpaced:,.0f} req/s; 1 s cycle: {rate:,.0f} polls/s, p99 lateness "
                f"{p99_runs[-1]:.0f} ms, with a dead device {p99_dead_runs[-1]:.0f} ms",
                flush=True,
            )
    finally:
        assert farm.stdin is not None
        farm.stdin.close()
        farm.wait(timeout=30)
    raw, unpaced = median(raw_runs), median(unpaced_runs)
    p99, p99_dead = median(p99_runs), median(p99_dead_runs)
    label = f"pymodbus clients, one per gateway, same reads, {args.devices} units"
    figures = [
        Figure("f_polling", "(f) poll request rate, unpaced", "req/s", unpaced, raw, label,
               f"median of {len(raw_runs)}", ">= 70% of raw", unpaced >= 0.7 * raw,
               unpaced_runs, raw_runs),
        Figure("f_polling", f"(f) {args.devices} devices at 1 s: polls/s", "polls/s",
               median(paced_rates), None, "-", f"median of {len(paced_rates)}",
               f">= {args.devices} polls/s", median(paced_rates) >= 0.97 * args.devices,
               paced_rates),
        Figure("f_polling", "(f) p99 poll lateness at 1 s", "ms", p99, None, "-",
               f"median of {len(p99_runs)}", "<= 250 ms", p99 <= 250, p99_runs),
        Figure("f_polling", "(f) p99 lateness, one dead device added", "ms", p99_dead, p99,
               "same fleet without the dead device", f"median of {len(p99_dead_runs)}",
               "<= no-dead + 1 timeout (1,000 ms)", p99_dead <= p99 + 1000, p99_dead_runs,
               p99_runs),
    ]  # fmt: skip
    emit(figures, args, {"devices": args.devices, "seconds": seconds})


if __name__ == "__main__":
    main()
