"""The MQTT client's hand-off from paho's thread to the event loop: bounded batches, and paho's
thread held back while the inbox is full (no broker needed: messages enter at the callback)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode

from derim.adapters.mqtt import client as client_module
from derim.adapters.mqtt.client import MqttClient
from derim.config import load_settings
from derim.errors import TransportError


def fake_message(mid: int) -> SimpleNamespace:
    return SimpleNamespace(_topic=b"t/x", payload=b"1", qos=1, mid=mid, properties=None)


@pytest.fixture
def client() -> MqttClient:
    """A client never started: tests feed its paho callback directly."""
    return MqttClient(load_settings(None, mqtt_url="mqtt://127.0.0.1:1"), ["t/#"])


async def test_batches_are_capped_and_keep_the_order(client: MqttClient) -> None:
    """MAX_BATCH + 10 messages come out as two batches, in arrival order."""
    client._loop = asyncio.get_running_loop()
    total = client_module.MAX_BATCH + 10
    for mid in range(total):
        client._on_message(None, None, fake_message(mid))  # type: ignore[arg-type]
    first = await client.messages()
    second = await client.messages()
    assert len(first) == client_module.MAX_BATCH
    assert [m.mid for m in first + second] == list(range(total))


async def test_a_full_inbox_holds_paho_back_until_the_loop_takes_a_batch(
    client: MqttClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the inbox at its bound, paho's thread waits (it stops reading the socket) and goes
    on once the event loop has taken a batch; nothing is dropped."""
    monkeypatch.setattr(client_module, "MAX_INBOX", 3)
    monkeypatch.setattr(client_module, "MAX_BATCH", 2)
    client._loop = asyncio.get_running_loop()
    delivered = threading.Event()

    def paho_thread() -> None:
        for mid in range(4):
            client._on_message(None, None, fake_message(mid))  # type: ignore[arg-type]
        delivered.set()

    thread = threading.Thread(target=paho_thread)
    thread.start()
    await asyncio.sleep(0.2)
    assert not delivered.is_set()
    taken = [m.mid for m in await client.messages()]
    await asyncio.to_thread(delivered.wait, 5)
    taken += [m.mid for m in await client.messages()]
    thread.join()
    assert taken == [0, 1, 2, 3]


class ChunkedSocket:
    """A non-blocking socket stand-in that returns queued chunks, one per ``recv``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)[:size]

    def close(self) -> None:
        self.chunks = []


def test_the_buffered_socket_serves_small_reads_from_one_large_read() -> None:
    inner = ChunkedSocket([b"abcdef", b"gh", b""])
    sock = client_module._BufferedSocket(inner)  # type: ignore[arg-type]
    assert [sock.recv(1), sock.recv(2), sock.recv(10)] == [b"a", b"bc", b"def"]
    assert inner.reads == 1
    assert sock.recv(1) == b"g"
    assert sock.pending() == 1
    assert sock.recv(5) == b"h"
    assert sock.buffered() == 0
    assert sock.recv(1) == b""  # the peer closed
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert inner.reads == 4


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 QoS 0 PUBLISH (remaining length under 128 bytes)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def feed(client: MqttClient, chunks: list[bytes]) -> ChunkedSocket:
    """Give the client's paho side a socket that returns ``chunks``, then let it read once."""
    inner = ChunkedSocket(chunks)
    client._client._sock = client_module._BufferedSocket(inner)  # type: ignore[arg-type]
    assert client._client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    return inner


async def test_paho_handles_every_packet_of_one_read_and_only_then_reads_again() -> None:
    """Three PUBLISH packets arrive in two reads, the third split over both: one ``loop_read``
    hands all three to the inbox in order, with a socket read per chunk, not per field."""
    client = MqttClient(
        load_settings(None, mqtt_url="mqtt://127.0.0.1:1", mqtt_protocol="3.1.1"), ["t/#"]
    )
    client._loop = asyncio.get_running_loop()
    packets = b"".join(publish_packet(f"t/{n}", str(n).encode()) for n in range(3))
    inner = feed(client, [packets[:-2], packets[-2:]])
    received = await client.messages()
    assert [(m.topic, m.payload, m.qos) for m in received] == [
        ("t/0", b"0", 0), ("t/1", b"1", 0), ("t/2", b"2", 0)
    ]  # fmt: skip
    assert inner.reads == 2  # one per chunk; none once the buffer is empty (select's turn)


def mqtt5_publish(topic: str | bytes, payload: bytes, mid: int, properties: bytes = b"") -> bytes:
    """An MQTT 5 QoS 1 PUBLISH with packet id ``mid`` (remaining length under 128 bytes)."""
    name = topic.encode() if isinstance(topic, str) else topic
    body = (
        len(name).to_bytes(2, "big")
        + name
        + mid.to_bytes(2, "big")
        + bytes([len(properties)])
        + properties
        + payload
    )
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


async def test_mqtt5_packets_with_and_without_properties_decode_alike(
    client: MqttClient,
) -> None:
    """A PUBLISH without properties takes the short path (3.1.1 decoder, no paho message
    object), one with correlation data paho's MQTT 5 path; both give topic, payload, QoS and
    packet id, and the second its correlation data."""
    client._loop = asyncio.get_running_loop()
    paho_path: list[str] = []
    on_message = client._on_message

    def counted(paho_client: Any, userdata: Any, message: Any) -> None:
        paho_path.append(message.topic)
        on_message(paho_client, userdata, message)

    client._client.on_message = counted
    correlation = bytes([9]) + (3).to_bytes(2, "big") + b"abc"  # property 9, binary data
    feed(client, [mqtt5_publish("t/a", b"1", 7) + mqtt5_publish("t/b", b"", 8, correlation)])
    received = await client.messages()
    assert [(m.topic, m.payload, m.qos, m.mid, m.correlation) for m in received] == [
        ("t/a", b"1", 1, 7, None), ("t/b", b"", 1, 8, b"abc")
    ]  # fmt: skip
    assert paho_path == ["t/b"]


async def test_a_topic_not_utf8_on_pahos_path_is_received_with_replacement_characters(
    client: MqttClient,
) -> None:
    """A PUBLISH with properties and a topic that is not UTF-8 (brokers should refuse it) is
    received, its topic decoded with U+FFFD, instead of killing paho's thread."""
    client._loop = asyncio.get_running_loop()
    correlation = bytes([9]) + (1).to_bytes(2, "big") + b"c"
    feed(client, [mqtt5_publish(b"t/\xff", b"1", 3, correlation)])
    received = await client.messages()
    assert [(m.topic, m.payload, m.mid) for m in received] == [("t/\ufffd", b"1", 3)]


async def test_an_mqtt5_publish_with_an_empty_topic_and_no_alias_takes_pahos_path(
    client: MqttClient,
) -> None:
    """An empty topic goes with a topic alias, which is a property: a PUBLISH with neither is
    left to paho's MQTT 5 path, which hands it on with the empty topic (the adapter then
    dead-letters it as unmapped), not to the short path's 3.1.1 decoder."""
    client._loop = asyncio.get_running_loop()
    feed(client, [mqtt5_publish("", b"1", 4)])
    received = await client.messages()
    assert [(m.topic, m.payload, m.mid) for m in received] == [("", b"1", 4)]


def test_a_puback_handled_while_a_command_is_published_does_not_deadlock() -> None:
    """paho calls ``on_publish`` holding its outgoing-message lock, which ``publish`` takes
    too: while paho's thread settles a PUBACK, a command published from the event loop waits
    for that lock and then goes on (here to the not-connected error), and so does paho's."""
    client = MqttClient(load_settings(None, mqtt_url="mqtt://127.0.0.1:1"), ["t/#"])
    loop_ready, network_holds_lock = threading.Event(), threading.Event()
    outcome: list[str] = []

    def network() -> None:  # as paho's _handle_pubackcomp
        loop_ready.wait(5)
        with client._client._out_message_mutex:
            network_holds_lock.set()
            time.sleep(0.2)
            client._on_publish(client._client, None, 1, None, None)
        outcome.append("puback handled")

    async def command() -> None:
        client._loop = asyncio.get_running_loop()
        loop_ready.set()
        await asyncio.to_thread(network_holds_lock.wait, 5)
        with pytest.raises(TransportError, match="cmd/x"):
            await client.publish("cmd/x", b"1")
        outcome.append("publish returned")

    threads = [
        threading.Thread(target=network, daemon=True),
        threading.Thread(target=asyncio.run, args=(command(),), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(outcome) == ["puback handled", "publish returned"]
