"""(g) MQTT ingest from broker to stored record, against a raw paho subscriber that only counts.

Ours: DERIM's real path, ``running_services`` with the MQTT adapter (persistent session, default
receive maximum) and a mapping of the ``_mqtt.meter_payload`` JSON readings on
``bench/meter/+/telemetry`` to meter records stored in SQLite. Raw: ``_mqtt.raw_rate``. Both get
the same N messages from the same two publisher processes, raw then ours, in three cases: QoS 1
over MQTT 5, QoS 0 over MQTT 5 and QoS 0 over MQTT 3.1.1 (the subscribers' protocol: plain paho
decodes an MQTT 5 PUBLISH in ~14 µs against ~2 µs for 3.1.1, its property parsing, which DERIM's
client skips for packets without properties). Each run has a fresh broker (autosave off, so no
snapshot of a queue of a million messages every second) and, for ours, a fresh data directory.
Rates run from the first to the last message: for ours, stored (``mqtt.counters.records``,
sampled every 5 ms); for raw, received. Every message has its own (device, timestamp), so loss is
counted in storage once the services closed: published minus distinct rows.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paho.mqtt.enums import MQTTProtocolVersion

from _common import Figure, arg_parser, emit, machine_info, median, repeats
from _mqtt import PUBLISHERS, SUBSCRIPTION, Publisher, raw_rate
from derim.adapters.mqtt.adapter import MqttAdapter
from derim.config import load_settings
from derim.services import running_services
from derim.sim.broker import Mosquitto

BENCH = "g_mqtt"
MAPPING = f"""\
name: bench_meter
description: benchmarks/_mqtt.py meter readings, one JSON object per message.
device_type: meter
routes:
  - topic: "{SUBSCRIPTION}"
    device_id: "meter-{{2}}"
    format: json
    timestamp: {{path: ts, format: iso8601}}
    fields:
      power_kw: {{path: P, unit: W}}
      voltage_v: {{path: U, unit: V}}
      current_a: {{path: I, unit: A}}
      frequency_hz: {{path: F, unit: Hz}}
      energy_import_kwh: {{path: E, unit: Wh}}
"""
CASES: tuple[tuple[int, Protocol], ...] = ((1, "5"), (0, "5"), (0, "3.1.1"))
"""(QoS, MQTT version of the subscribers) of each measurement."""
FULL_MESSAGES = {1: 1_000_000, 0: 500_000}
QUICK_MESSAGES = 100_000
SAMPLE_S = 0.005
"""How often ours' stored-record counter is read."""
STALL_S = 60.0
"""Once the publishers are done, no new record for this long ends a run: the rest is lost. Long,
because at QoS 0 storing can pause for seconds while paho's thread reads a backlog."""
SUBSCRIBE_TIMEOUT_S = 10.0
QOS1_TARGET, QOS0_TARGET = 0.8, 20_000
Protocol = Literal["5", "3.1.1"]
Case = tuple[int, Protocol]
PAHO_PROTOCOL = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


@dataclass
class OursRun:
    """One measurement of DERIM's path."""

    rate: float
    """Records/s from the first stored to the last."""
    stored: int
    """Distinct (device, timestamp) rows in the database after the services closed."""
    records: int
    """Records the adapter counted as stored (redeliveries included)."""
    messages: int
    rejected: int
    spooled: int

    def lost(self, published: int) -> int:
        """Published messages with no row in storage."""
        return published - self.stored


def run_timeout_s(n: int) -> float:
    """Longest a run of ``n`` messages may take (fails rather than hang): at least 1,000/s."""
    return max(120.0, n / 1_000)


async def run_ours(
    broker: Mosquitto, qos: int, n: int, directory: Path, protocol: Protocol = "5"
) -> OursRun:
    """Publish ``n`` readings at ``qos`` to DERIM's MQTT adapter (subscribed over ``protocol``);
    measured until all are stored (or none was stored for ``STALL_S`` after the publishers)."""
    mapping = directory / "bench_meter.yaml"
    mapping.write_text(MAPPING)
    settings = load_settings(
        None,
        data_dir=directory / "data",
        mqtt_url=broker.url,
        mqtt_mappings=[str(mapping)],
        mqtt_client_id="derim-bench",
        mqtt_qos=qos,
        mqtt_protocol=protocol,
    )
    with Publisher(broker.host, broker.port, qos, n, PUBLISHERS) as publisher:
        async with running_services(settings) as services:
            mqtt = services.mqtt
            assert mqtt is not None
            await _until(lambda: mqtt.client.subscribed, SUBSCRIBE_TIMEOUT_S)
            publisher.go()
            rate = await _follow(mqtt, n, publisher)
            await asyncio.to_thread(publisher.wait)
            counters, spooled = mqtt.counters, services.writer.counters.spooled
    return OursRun(
        rate,
        _distinct_rows(settings.database_path),
        counters.records,
        counters.messages,
        counters.rejected,
        spooled,
    )


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


async def _follow(mqtt: MqttAdapter, n: int, publisher: Publisher) -> float:
    """Records/s stored from the first sample that saw records to the last that saw new ones."""
    first = last = time.perf_counter()
    at_first = seen = 0
    deadline = time.monotonic() + run_timeout_s(n)
    while seen < n:
        await asyncio.sleep(SAMPLE_S)
        now, records = time.perf_counter(), mqtt.counters.records
        if records != seen:
            if not seen:
                first, at_first = now, records
            seen, last = records, now
        elif now - last > STALL_S and _finished(publisher):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"ours: {seen} of {n} records stored in {run_timeout_s(n)} s")
    if seen == at_first:
        raise RuntimeError(f"ours: {seen} records stored, all in one sample")
    return (seen - at_first) / (last - first)


def _finished(publisher: Publisher) -> bool:
    """Whether every publisher process has exited (raises if one failed)."""
    publisher.check()
    return all(child.poll() is not None for child in publisher.children)


def _distinct_rows(database: Path) -> int:
    """Distinct (device, timestamp) rows in raw telemetry, merged or still staged."""
    conn = sqlite3.connect(database)
    try:
        (count,) = conn.execute(
            "SELECT count(*) FROM (SELECT dev, ts FROM telemetry UNION SELECT dev, ts FROM staging)"
        ).fetchone()
    finally:
        conn.close()
    return int(count)


def measure(qos: int, n: int, protocol: Protocol = "5") -> tuple[float, OursRun]:
    """Raw then ours, each on a fresh broker, both subscribed over ``protocol``; raw's rate and
    ours' run."""
    with (
        tempfile.TemporaryDirectory(prefix="derim-bench-g-") as tmp,
        Mosquitto(Path(tmp) / "raw", autosave_interval_s=0) as broker,
    ):
        raw = raw_rate(
            broker.host, broker.port, qos, n, protocol=PAHO_PROTOCOL[protocol],
            timeout_s=run_timeout_s(n),
        )  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="derim-bench-g-") as tmp,
        Mosquitto(Path(tmp) / "broker", autosave_interval_s=0) as broker,
    ):
        ours = asyncio.run(run_ours(broker, qos, n, Path(tmp), protocol))
    return raw, ours


def main(argv: list[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    parser = arg_parser(__doc__ or "")
    parser.add_argument(
        "--messages",
        type=int,
        help="Messages per run at both QoS (default: quick 100,000; full 1,000,000 at QoS 1, "
        "500,000 at QoS 0).",
    )
    args: argparse.Namespace = parser.parse_args(argv)
    sizes = {qos: args.messages or (QUICK_MESSAGES if args.quick else full)
             for qos, full in FULL_MESSAGES.items()}  # fmt: skip
    n_rep = repeats(args, quick=3, full=1)
    started = time.monotonic()
    raw_runs: dict[Case, list[float]] = {case: [] for case in CASES}
    ours_runs: dict[Case, list[OursRun]] = {case: [] for case in CASES}
    for rep in range(n_rep):
        for qos, protocol in CASES:
            n = sizes[qos]
            raw, ours = measure(qos, n, protocol)
            raw_runs[qos, protocol].append(raw)
            ours_runs[qos, protocol].append(ours)
            print(
                f"  run {rep + 1}/{n_rep}, QoS {qos}, MQTT {protocol}, {n:,} messages: raw "
                f"{raw:,.0f}/s, ours {ours.rate:,.0f}/s ({ours.rate / raw:.0%}), stored "
                f"{ours.stored:,}, lost {ours.lost(n):,}, records counted {ours.records:,}, "
                f"rejected {ours.rejected}, spooled {ours.spooled}",
                flush=True,
            )
    runtime_s = time.monotonic() - started
    print(f"  runtime {runtime_s:.0f} s", flush=True)
    figures = _figures(sizes, raw_runs, ours_runs)
    details = {
        "messages": sizes,
        "publishers": PUBLISHERS,
        "repeats": n_rep,
        "runtime_s": round(runtime_s, 1),
        "rate": "first to last message: stored (ours), received (raw)",
        "runs": {
            f"qos{qos}-mqtt{protocol}": [
                {"raw": round(raw), "ours": round(run.rate), "stored": run.stored,
                 "lost": run.lost(sizes[qos]), "records": run.records, "messages": run.messages,
                 "rejected": run.rejected, "spooled": run.spooled}
                for raw, run in zip(raw_runs[qos, protocol], ours_runs[qos, protocol], strict=True)
            ]
            for qos, protocol in CASES
        },
    }  # fmt: skip
    emit(figures, args, details | {"machine": machine_info()})


def _figures(
    sizes: dict[int, int], raw_runs: dict[Case, list[float]], ours_runs: dict[Case, list[OursRun]]
) -> list[Figure]:
    """The figures of (g): rate and loss at QoS 1 (MQTT 5), rate at QoS 0 over MQTT 5 and over
    MQTT 3.1.1, and loss at QoS 0."""
    stat = f"median of {len(raw_runs[CASES[0]])}"
    raw_label = f"paho subscriber that only counts, same {PUBLISHERS} publisher processes"
    rates = {case: [run.rate for run in ours_runs[case]] for case in CASES}
    lost = {case: [float(run.lost(sizes[case[0]])) for run in ours_runs[case]] for case in CASES}
    qos1, qos0_v5, qos0_v311 = CASES
    ours1, raw1 = median(rates[qos1]), median(raw_runs[qos1])
    ours0_v5, ours0_v311 = median(rates[qos0_v5]), median(rates[qos0_v311])
    lost0 = lost[qos0_v5] + lost[qos0_v311]
    loss_label = "raw subscriber (it fails unless it receives all)"
    return [
        Figure(BENCH, "(g) MQTT QoS 1 broker to stored", "msg/s", ours1, raw1, raw_label, stat,
               ">= 80% of raw, zero loss", ours1 >= QOS1_TARGET * raw1 and not any(lost[qos1]),
               rates[qos1], raw_runs[qos1], note=f"MQTT 5, {sizes[1]:,} messages per run"),
        Figure(BENCH, "(g) MQTT QoS 1 lost messages", "msgs", max(lost[qos1]), 0.0, loss_label,
               f"max of {len(lost[qos1])}", "0", not any(lost[qos1]), lost[qos1],
               note="published minus distinct (device, timestamp) rows stored"),
        Figure(BENCH, "(g) MQTT QoS 0 broker to stored, MQTT 5", "msg/s", ours0_v5,
               median(raw_runs[qos0_v5]), raw_label, stat, ">= 20,000 msg/s",
               ours0_v5 >= QOS0_TARGET, rates[qos0_v5], raw_runs[qos0_v5],
               note=f"{sizes[0]:,} messages per run"),
        Figure(BENCH, "(g) MQTT QoS 0 broker to stored, MQTT 3.1.1", "msg/s", ours0_v311,
               median(raw_runs[qos0_v311]), raw_label, stat, ">= 20,000 msg/s",
               ours0_v311 >= QOS0_TARGET, rates[qos0_v311], raw_runs[qos0_v311],
               note=f"{sizes[0]:,} messages per run"),
        Figure(BENCH, "(g) MQTT QoS 0 lost messages", "msgs", max(lost0), 0.0, loss_label,
               f"max of {len(lost0)}", "none (QoS 0 may drop under load)", None, lost0,
               note=f"both protocols; not stored {STALL_S:.0f} s after the last stored record"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
