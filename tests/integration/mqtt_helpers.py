"""Shared pieces of the MQTT integration tests: a test mapping, a publisher, a responding device
and DERIM's services started against a broker."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from async_helpers import until
from derim.config import load_settings
from derim.services import Services, running_services
from derim.sim.broker import Mosquitto
from derim.storage.base import TelemetryQuery

MAPPING = """
name: test_gateway
device_type: meter
routes:
  - topic: "t/+/telemetry"
    device_id: "{1}"
    format: json
    timestamp: {path: ts, format: epoch_ms}
    fields:
      power_kw: {path: P, unit: W}
      voltage_v: {path: U}
commands:
  topic: "t/{device_id}/cmd"
  response_topic: "t/{device_id}/cmd/response"
  timeout_s: 1.5
  qos: 1
"""
T0_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: device timestamps in the tests count from here (ms)."""


def payload(i: int) -> bytes:
    return json.dumps({"ts": T0_MS + i * 1000, "P": 1000 + i, "U": 230.0}).encode()


def stream(device_id: str, indices: range) -> list[tuple[str, bytes]]:
    """Messages of ``device_id`` one second apart, numbered by ``indices``."""
    return [(f"t/{device_id}/telemetry", payload(i)) for i in indices]


class Publisher:
    """A paho client in its own thread that publishes and waits for every PUBACK."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-publisher") -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)  # fmt: skip
        self.client.max_inflight_messages_set(1000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, messages: Sequence[tuple[str, bytes]], qos: int = 1) -> None:
        infos = [self.client.publish(topic, body, qos=qos) for topic, body in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.asynccontextmanager
async def derim(
    broker: Mosquitto, data_dir: Path, mapping_file: Path, **overrides: Any
) -> AsyncIterator[Services]:
    settings = load_settings(
        None,
        data_dir=data_dir,
        mqtt_url=broker.url,
        mqtt_mappings=[str(mapping_file)],
        **{"mqtt_client_id": "derim-test", **overrides},
    )
    async with running_services(settings) as services:
        await until(lambda: services.mqtt is not None and services.mqtt.client.subscribed)
        yield services


async def stored(services: Services, device_id: str) -> list[int]:
    """Timestamps (ms) stored for ``device_id``."""
    page = await services.store.query(
        TelemetryQuery(device_id, T0_MS - 1, T0_MS + 10**9, fields=("power_kw",), limit=100_000)
    )
    rows = json.loads(page.records_json)
    return [int(datetime.fromisoformat(row["timestamp"]).timestamp() * 1000) for row in rows]


class Responder:
    """A device on MQTT that answers commands on the response topic with their correlation."""

    def __init__(self, broker: Mosquitto, answer: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="responder",
                                  protocol=paho.MQTTv5)  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.answer = answer
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("t/+/cmd", qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        body = json.loads(message.payload)
        self.received.append(body)
        properties = Properties(paho.PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = message.properties.CorrelationData
        reply = {"status": self.answer, "message": f"{self.answer} by the device"}
        client.publish(message.properties.ResponseTopic, json.dumps(reply), qos=1,
                       properties=properties)  # fmt: skip

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
