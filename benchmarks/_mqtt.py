"""MQTT benchmark helpers: publishers in their own processes and the raw paho subscriber baseline.

The publishers send ``n`` JSON meter readings to ``bench/meter/{i % 100}/telemetry`` as fast as the
broker takes them. ``raw_rate`` is the baseline an MQTT ingestion path is compared with: a plain
paho client on a persistent session that only counts messages. The broker is
``derim.sim.broker.Mosquitto`` (the same class the demo and the integration tests use).

Usage: ``python benchmarks/_mqtt.py [--qos 0 1] [-n 200000]`` starts its own broker and prints the
raw rates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from derim.sim.broker import Mosquitto

METERS = 100
TOPIC = "bench/meter/{meter}/telemetry"
SUBSCRIPTION = "bench/meter/+/telemetry"
PUBLISHER_INFLIGHT = 1000
"""QoS 1 messages the publisher may have unacknowledged (paho's default is 20)."""
PUBLISHER_BACKLOG = 10_000
"""Messages a publisher hands paho ahead of the acknowledgements: paho keys them by a 16-bit
message id, so past 65,535 outstanding ones it overwrites queued messages and loses them."""
PUBLISHERS = 2
"""Publisher processes: one paho publisher (~9k msg/s at QoS 1 here) is slower than one paho
subscriber, which would make the baseline measure the publisher."""
SESSION_EXPIRY_S = 3600
TIMEOUT_S = 10.0
"""How long to wait for a CONNACK, a SUBACK or a publisher's next acknowledgement."""
T0 = datetime(2024, 6, 1, 12, tzinfo=UTC)


def meter_payload(i: int) -> bytes:
    """Reading ``i`` of meter ``i % 100``: one second after its previous one, values drifting."""
    ts = (T0 + timedelta(seconds=i // METERS)).isoformat().replace("+00:00", "Z")
    wave = (i * 7919) % 1000
    power, volts = 1000 + wave * 0.5, 229 + wave % 30 * 0.1
    amps, hertz = 4 + wave % 50 * 0.05, 49.95 + wave % 11 * 0.01
    return (
        f'{{"ts": "{ts}", "P": {power:.1f}, "U": {volts:.1f}, "I": {amps:.2f}, '
        f'"F": {hertz:.2f}, "E": {100_000 + i}}}'
    ).encode()


def _client(
    client_id: str = "", protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
) -> mqtt.Client:
    """A paho client (callback API 2); MQTT 3.1.1 ones keep their session (clean_session False)."""
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else False,
    )


def publish(
    host: str,
    port: int,
    qos: int,
    messages: range,
    before_start: Callable[[], object] = lambda: None,
) -> float:
    """Publish the meter readings numbered ``messages`` at ``qos``; seconds until all are done.

    ``before_start`` runs once connected. A message is done when paho reports it published
    (written to the socket at QoS 0, PUBACK received at QoS 1).
    """
    client = _client()
    client.max_inflight_messages_set(PUBLISHER_INFLIGHT)
    client.max_queued_messages_set(0)
    connected, done = threading.Event(), threading.Event()
    backlog = threading.Semaphore(PUBLISHER_BACKLOG)
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        backlog.release()
        if acked == len(messages):
            done.set()

    client.on_connect = lambda *_: connected.set()
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT_S):
            raise RuntimeError(f"publisher: no CONNACK from {host}:{port}")
        before_start()
        started = time.perf_counter()
        for i in messages:
            if not backlog.acquire(timeout=TIMEOUT_S):
                raise RuntimeError(f"publisher: stalled, {acked} of {len(messages)} done")
            client.publish(TOPIC.format(meter=i % METERS), meter_payload(i), qos)
        if not done.wait(max(60.0, len(messages) / 1000)):
            raise RuntimeError(f"publisher: {acked} of {len(messages)} messages done")
        return time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()


class Publisher:
    """``publish`` of ``n`` messages split over child processes (spawned, not forked).

    The children connect at once, then wait for ``go()``; child ``k`` of ``processes`` sends
    messages ``k, k + processes, ...`` so every child covers all 100 meters.
    """

    def __init__(self, host: str, port: int, qos: int, n: int, processes: int = 1) -> None:
        self.n = n
        argv = [sys.executable, __file__, "publish", host, str(port), str(qos)]
        self.children = [
            subprocess.Popen(
                [*argv, str(k), str(n), str(processes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(processes)
        ]

    def go(self) -> None:
        """Start publishing."""
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()

    def wait(self, timeout_s: float = 600.0) -> float:
        """The publishers' combined rate (messages/s, up to the slowest) once all finished."""
        seconds = []
        for child in self.children:
            out, _ = child.communicate(timeout=timeout_s)
            if child.returncode != 0:
                raise RuntimeError(f"publisher failed (exit {child.returncode})")
            seconds.append(float(out))
        return self.n / max(seconds)

    def check(self) -> None:
        """Raise if a child has failed."""
        for child in self.children:
            if child.poll():
                raise RuntimeError(f"publisher failed (exit {child.returncode})")

    def close(self) -> None:
        """Kill the children still running."""
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.communicate()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_for_go() -> None:
    """Block until the parent writes "go" (exit if it went away instead)."""
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("publisher: no go from the parent")


def _publisher_main(argv: list[str]) -> None:
    """Child side of ``Publisher``: connect, wait for "go", publish, print the seconds taken."""
    host, (port, qos, start, stop, step) = argv[0], map(int, argv[1:])
    print(publish(host, port, qos, range(start, stop, step), _wait_for_go), flush=True)


def raw_rate(
    host: str,
    port: int,
    qos: int,
    n: int,
    *,
    publishers: int = PUBLISHERS,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    timeout_s: float = 600.0,
) -> float:
    """Messages/s a plain paho subscriber receives, first to last of ``n`` published messages.

    The subscriber holds a persistent session (fixed client id, clean_start/clean_session False)
    subscribed to ``bench/meter/+/telemetry`` at ``qos``; the ``publishers`` processes start
    publishing once the SUBACK is in. The session is removed afterwards so later runs queue
    nothing for it.
    """
    client_id = f"bench-raw-{uuid.uuid4().hex[:8]}"
    client = _client(client_id, protocol)
    subscribed, finished = threading.Event(), threading.Event()
    count, first, last = 0, 0.0, 0.0

    def on_message(*_: object) -> None:
        nonlocal count, first, last
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == n:
            last = time.perf_counter()
            finished.set()

    def on_connect(*_: object) -> None:
        client.subscribe(SUBSCRIPTION, qos)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    with Publisher(host, port, qos, n, publishers) as publisher:
        _connect(client, host, port, protocol, persistent=True)
        client.loop_start()
        try:
            if not subscribed.wait(TIMEOUT_S):
                raise RuntimeError("raw subscriber: no SUBACK")
            publisher.go()
            deadline = time.monotonic() + timeout_s
            while not finished.wait(1.0):
                publisher.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"raw subscriber: {count} of {n} messages in {timeout_s} s")
            publisher.wait()
        finally:
            _end_session(client, client_id, host, port, protocol)
    return (n - 1) / (last - first) if n > 1 else 0.0


def _connect(
    client: mqtt.Client, host: str, port: int, protocol: MQTTProtocolVersion, *, persistent: bool
) -> None:
    """Connect; MQTT 5 sessions are kept for an hour when ``persistent``, else none is kept."""
    if protocol == MQTTProtocolVersion.MQTTv5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
        client.connect(host, port, clean_start=not persistent, properties=properties)
    else:
        client.connect(host, port)


def _end_session(
    client: mqtt.Client, client_id: str, host: str, port: int, protocol: MQTTProtocolVersion
) -> None:
    """Disconnect and drop the persistent session from the broker."""
    if protocol == MQTTProtocolVersion.MQTTv5:
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        client.disconnect(properties=properties)
        client.loop_stop()
        return
    client.disconnect()
    client.loop_stop()
    cleaner = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    connected = threading.Event()
    cleaner.on_connect = lambda *_: connected.set()
    cleaner.connect(host, port)
    cleaner.loop_start()
    connected.wait(TIMEOUT_S)
    cleaner.disconnect()
    cleaner.loop_stop()


def main(argv: list[str] | None = None) -> None:
    """Start a private broker and print the raw subscriber rate at each QoS asked for."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        _publisher_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qos", type=int, nargs="+", choices=[0, 1], default=[0, 1])
    parser.add_argument("-n", type=int, default=200_000, help="Messages per run.")
    parser.add_argument("--publishers", type=int, default=PUBLISHERS, help="Publisher processes.")
    parser.add_argument("--mqtt311", action="store_true", help="MQTT 3.1.1 instead of 5.")
    args = parser.parse_args(argv)
    protocol = MQTTProtocolVersion.MQTTv311 if args.mqtt311 else MQTTProtocolVersion.MQTTv5
    with (
        tempfile.TemporaryDirectory(prefix="derim-bench-mqtt-") as tmp,
        Mosquitto(Path(tmp)) as broker,
    ):
        for qos in args.qos:
            rate = raw_rate(
                broker.host, broker.port, qos, args.n, publishers=args.publishers, protocol=protocol
            )
            print(f"raw paho subscriber, QoS {qos}, {args.n:,} messages: {rate:,.0f} msg/s")


if __name__ == "__main__":
    main()
