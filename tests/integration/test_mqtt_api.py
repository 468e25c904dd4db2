"""MQTT through the HTTP API: commands, the dead-letter endpoint, device status; MQTT 3.1.1 and
QoS 0 ingestion."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_server import ApiServer
from mqtt_helpers import MAPPING, Publisher, Responder, derim, stream

from async_helpers import until, until_async
from derim.sim.broker import Mosquitto


@pytest.fixture
def mqtt_api(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[ApiServer]:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    server = ApiServer(
        tmp_path / "data",
        mqtt_url=mosquitto.url,
        mqtt_mappings=[str(mapping)],
        mqtt_client_id="derim-api-test",
    ).start()
    yield server
    server.stop()


async def test_rejects_endpoint_shows_raw_payloads_newest_first(
    mqtt_api: ApiServer, mosquitto: Mosquitto
) -> None:
    """Rejected messages are listed with their reason and payload (text, or base64 when the
    bytes are not UTF-8), counted in /health, and paged with ``before``."""
    async with httpx.AsyncClient(base_url=mqtt_api.url, timeout=10) as client:

        async def subscribed() -> bool:
            mqtt = (await client.get("/health")).json()["mqtt"]
            return bool(mqtt["connected"])

        await until_async(subscribed)
        await asyncio.sleep(0.3)  # the SUBACK follows the CONNACK
        publisher = Publisher(mosquitto, "rejects-publisher")
        bad = [("t/r1/telemetry", b"{oops"), ("t/r1/telemetry", b"\xff\x00"), ("nope/x", b"1")]
        await asyncio.to_thread(publisher.send, bad)
        publisher.close()

        async def all_rejected() -> bool:
            return (await client.get("/health")).json()["ingest"]["rejected"] >= 2

        await until_async(all_rejected)
        page = (await client.get("/api/v1/ingest/rejects", params={"limit": 1})).json()
        assert page["total_since_start"] == 2
        newest = page["rejects"][0]
        assert newest["payload_encoding"] == "base64"
        assert base64.b64decode(newest["payload"]) == b"\xff\x00"
        older = await client.get("/api/v1/ingest/rejects", params={"before": page["next_before"]})
        assert [r["payload"] for r in older.json()["rejects"]] == ["{oops"]
        assert "JSON" in older.json()["rejects"][0]["reason"]
        assert (await client.get("/api/v1/ingest/rejects?limit=0")).status_code == 422


async def test_control_api_publishes_and_reports_the_device_answer(
    mqtt_api: ApiServer, mosquitto: Mosquitto
) -> None:
    """POST /api/v1/control/{id} for an MQTT device returns what the device answered; the device
    view shows the broker connection and the last message."""
    responder = Responder(mosquitto, "acknowledged")
    try:
        assert responder.subscribed.wait(5)
        async with httpx.AsyncClient(base_url=mqtt_api.url, timeout=10) as client:

            async def connected() -> bool:
                return bool((await client.get("/health")).json()["mqtt"]["connected"])

            await until_async(connected)
            await asyncio.sleep(0.3)
            publisher = Publisher(mosquitto, "control-publisher")
            await asyncio.to_thread(publisher.send, stream("c1", range(1)))
            publisher.close()

            async def registered() -> bool:
                return (await client.get("/api/v1/devices/c1")).status_code == 200

            await until_async(registered)
            view = (await client.get("/api/v1/devices/c1")).json()
            assert view["status"]["state"] == "online"
            assert view["status"]["last_seen"] is not None
            answer = await client.post(
                "/api/v1/control/c1", json={"command": "set_power_limit", "value": 3.0}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "acknowledged"
            assert responder.received[-1]["value"] == 3.0
            dry = await client.post(
                "/api/v1/control/c1", json={"command": "disconnect", "dry_run": True}
            )
            assert dry.json()["status"] == "validated"
            assert len(responder.received) == 1
    finally:
        responder.close()


@pytest.mark.parametrize(
    ("protocol", "qos"), [("3.1.1", 1), ("5", 0)], ids=["mqtt311-qos1", "mqtt5-qos0"]
)
async def test_other_protocol_versions_and_qos_ingest(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str, qos: int
) -> None:
    """MQTT 3.1.1 (persistent clean_session=false) and QoS 0 subscriptions ingest the same way."""
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    async with derim(
        mosquitto,
        tmp_path / "data",
        mapping,
        mqtt_client_id=f"derim-{protocol}-{qos}",
        mqtt_protocol=protocol,
        mqtt_qos=qos,
    ) as services:
        publisher = Publisher(mosquitto, f"pub-{protocol}-{qos}")
        await asyncio.to_thread(publisher.send, stream(f"v{qos}", range(200)), qos)
        publisher.close()
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records == 200)
        latest = await services.store.latest([f"v{qos}"])
        assert json.loads(json.dumps(latest[f"v{qos}"], default=str))["power_kw"] == 1.199
