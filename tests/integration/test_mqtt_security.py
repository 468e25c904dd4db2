"""MQTT over TLS with a username and password, against a Mosquitto that requires both."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from certificates import make_certificates
from mqtt_helpers import MAPPING, derim, payload
from paho.mqtt.enums import CallbackAPIVersion

from async_helpers import until
from derim.config import load_settings
from derim.services import running_services
from derim.sim.broker import Mosquitto

USER, PASSWORD = "derim", "s3cret-passw0rd"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """A broker on TLS that admits only ``USER``; yields it with the CA file."""
    ca, cert, key = make_certificates(tmp_path)
    passwords = tmp_path / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD],
        check=True,
        capture_output=True,
    )
    with Mosquitto(tmp_path / "broker", password_file=passwords, tls=(cert, key)) as broker:
        yield broker, ca


def publish_tls(broker: Mosquitto, ca: Path, messages: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-publisher")
    client.tls_set(ca_certs=str(ca))
    client.username_pw_set(USER, PASSWORD)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish("t/s1/telemetry", payload(i), qos=1) for i in range(messages)]
    for info in infos:
        info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


async def test_tls_with_credentials_ingests(
    secured: tuple[Mosquitto, Path], tmp_path: Path
) -> None:
    """mqtts:// with the CA and the right password: connected, subscribed, messages stored."""
    broker, ca = secured
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    assert broker.url.startswith("mqtts://")
    async with derim(
        broker,
        tmp_path / "data",
        mapping,
        mqtt_tls_ca=ca,
        mqtt_username=USER,
        mqtt_password=PASSWORD,
    ) as services:
        await asyncio.to_thread(publish_tls, broker, ca, 20)
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records == 20)


async def test_a_wrong_password_is_reported_not_ignored(
    secured: tuple[Mosquitto, Path], tmp_path: Path
) -> None:
    """The broker refuses the connection: the adapter stays offline and says why."""
    broker, ca = secured
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        mqtt_url=broker.url,
        mqtt_mappings=[str(mapping)],
        mqtt_tls_ca=ca,
        mqtt_username=USER,
        mqtt_password="wrong",
    )
    async with running_services(settings) as services:
        mqtt = services.mqtt
        assert mqtt is not None
        await until(lambda: mqtt.client.last_error is not None)
        assert not mqtt.client.connected
        assert "refused" in (mqtt.client.last_error or "")
