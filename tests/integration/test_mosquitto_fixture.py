"""The Mosquitto test broker: QoS 1 round trip, persistent sessions across restart and crash,
MQTT 5 shared subscriptions."""

from __future__ import annotations

import queue
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from derim.sim.broker import Mosquitto

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
SESSION_EXPIRY_S = 3600
PROTOCOLS = [
    pytest.param(MQTTProtocolVersion.MQTTv311, id="mqtt311"),
    pytest.param(MQTTProtocolVersion.MQTTv5, id="mqtt5"),
]


class Peer:
    """A paho client with its network loop in a thread; received messages land in a queue."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str = "",
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.protocol = protocol
        self.persistent = persistent
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else not persistent,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self._acked: set[int] = set()
        self._acked_changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _client, _userdata, message: self.messages.put(message)

    def _on_connect(
        self, _c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, *_: object
    ) -> None:
        self.session_present = flags.session_present
        self._connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, *_: object) -> None:
        with self._acked_changed:
            self._acked.add(mid)
            self._acked_changed.notify_all()

    def connect(self) -> Peer:
        """Connect (persistent: keep the session on the broker) and wait for CONNACK."""
        properties = None
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
            self.client.connect(
                self.broker.host,
                self.broker.port,
                clean_start=not self.persistent,
                properties=properties,
            )
        else:
            self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self._connected.wait(TIMEOUT_S), "no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for SUBACK."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self._acked_changed:
            assert self._acked_changed.wait_for(lambda: mid in self._acked, TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payloads: list[bytes], qos: int = 1) -> None:
        """Publish each payload and wait until the broker acknowledged all of them."""
        infos = [self.client.publish(topic, payload, qos) for payload in payloads]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)
            assert info.is_published()

    def receive(self, count: int) -> list[mqtt.MQTTMessage]:
        """The next ``count`` messages (fails after TIMEOUT_S)."""
        deadline = time.monotonic() + TIMEOUT_S
        return [
            self.messages.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(count)
        ]

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker) and stop the loop."""
        self.client.disconnect()
        self.client.loop_stop()


def unique(prefix: str) -> str:
    """A topic or client id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_qos1_round_trip(mosquitto: Mosquitto) -> None:
    topic = unique("test/round-trip")
    subscriber, publisher = Peer(mosquitto).connect(), Peer(mosquitto).connect()
    try:
        subscriber.subscribe(topic, qos=1)
        publisher.publish(topic, [b'{"P": 1234.5}'], qos=1)
        [message] = subscriber.receive(1)
        assert (message.topic, message.payload, message.qos) == (topic, b'{"P": 1234.5}', 1)
        assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    finally:
        subscriber.close()
        publisher.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_session_survives_restart(
    fresh_mosquitto: Mosquitto, protocol: MQTTProtocolVersion
) -> None:
    broker, client_id, topic = fresh_mosquitto, "meter-sink", "site/meter/telemetry"
    first = Peer(broker, client_id, protocol=protocol, persistent=True).connect()
    assert first.session_present is False
    first.subscribe(topic, qos=1)
    first.close()

    before = [f"before-{i}".encode() for i in range(5)]
    publisher = Peer(broker).connect()
    publisher.publish(topic, before, qos=1)
    publisher.close()
    broker.restart()
    after = [f"after-{i}".encode() for i in range(5)]
    publisher = Peer(broker).connect()
    publisher.publish(topic, after, qos=1)
    publisher.close()

    again = Peer(broker, client_id, protocol=protocol, persistent=True).connect()
    try:
        assert again.session_present is True
        messages = again.receive(10)
        assert [m.payload for m in messages] == before + after
        assert {m.qos for m in messages} == {1}
    finally:
        again.close()


def test_queued_messages_survive_a_crash_after_autosave(fresh_mosquitto: Mosquitto) -> None:
    broker, topic = fresh_mosquitto, "site/crash/telemetry"
    first = Peer(broker, "crash-sink", persistent=True).connect()
    first.subscribe(topic, qos=1)
    first.close()
    publisher = Peer(broker).connect()
    publisher.publish(topic, [b"a", b"b", b"c"], qos=1)
    publisher.close()
    saved = broker.persistence_file.stat().st_mtime_ns if broker.persistence_file.exists() else 0
    deadline = time.monotonic() + TIMEOUT_S
    while not broker.persistence_file.exists() or (
        broker.persistence_file.stat().st_mtime_ns == saved
    ):
        assert time.monotonic() < deadline, "no autosave"
        time.sleep(0.05)

    broker.kill()
    assert not broker.running
    broker.start()
    again = Peer(broker, "crash-sink", persistent=True).connect()
    try:
        assert again.session_present is True
        assert [m.payload for m in again.receive(3)] == [b"a", b"b", b"c"]
    finally:
        again.close()


def test_shared_subscription_splits_the_stream(mosquitto: Mosquitto) -> None:
    topic, count = unique("test/shared"), 200
    members = [Peer(mosquitto).connect() for _ in range(2)]
    publisher = Peer(mosquitto).connect()
    try:
        for member in members:
            member.subscribe(f"$share/g/{topic}/+", qos=1)
        sent = [f"m-{i}".encode() for i in range(count)]
        for i in range(0, count, 50):
            publisher.publish(f"{topic}/{i // 50}", sent[i : i + 50], qos=1)
        deadline = time.monotonic() + TIMEOUT_S
        got: list[list[bytes]] = [[], []]
        while sum(map(len, got)) < count:
            assert time.monotonic() < deadline, f"received {sum(map(len, got))} of {count}"
            for member, bucket in zip(members, got, strict=True):
                while not member.messages.empty():
                    bucket.append(bytes(member.messages.get_nowait().payload))
            time.sleep(0.01)
        time.sleep(0.2)
        assert all(member.messages.empty() for member in members), "more than sent arrived"
        assert sorted(got[0] + got[1]) == sorted(sent), "lost or duplicated messages"
        assert all(len(bucket) >= count // 4 for bucket in got), [len(b) for b in got]
    finally:
        for peer in [*members, publisher]:
            peer.close()
