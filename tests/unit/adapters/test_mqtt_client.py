"""The MQTT client's hand-off from paho's thread to the event loop: bounded batches, and paho's
thread held back while the inbox is full (no broker needed: messages enter at the callback)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from derim.adapters.mqtt import client as client_module
from derim.adapters.mqtt.client import MqttClient
from derim.config import load_settings


def fake_message(mid: int) -> SimpleNamespace:
    return SimpleNamespace(topic="t/x", payload=b"1", qos=1, mid=mid, properties=None)


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
