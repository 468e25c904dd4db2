"""The MQTT adapter inside running services, against a real Mosquitto on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mqtt_helpers import (
    MAPPING,
    T0_MS,
    Publisher,
    Responder,
    derim,
    payload,
    stored,
    stream,
)

from async_helpers import until, until_async
from derim.adapters.mqtt import client as client_module
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.services import Services
from derim.sim.broker import Mosquitto


@pytest.fixture
def mapping_file(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING)
    return path


async def _count_is(services: Services, device_id: str, count: int) -> bool:
    return len(set(await stored(services, device_id))) == count


async def test_a_burst_is_stored_whole_with_device_timestamps(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """1,000 QoS 1 messages on one topic in a burst: 1,000 records, each at its device time
    (not the arrival time), and the device registered from the mapping."""
    async with derim(mosquitto, tmp_path / "data", mapping_file) as services:
        publisher = Publisher(mosquitto)
        await asyncio.to_thread(publisher.send, stream("m1", range(1000)))
        publisher.close()
        assert services.mqtt is not None
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records == 1000)
        times = await stored(services, "m1")
        assert times == [T0_MS + i * 1000 for i in range(1000)]
        device = services.registry.get("m1")
        assert device.device_type.value == "meter"
        assert services.status(device) is not None


async def test_messages_larger_than_a_socket_read_are_stored_whole(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """Readings padded past the client's 256 KiB read, between small ones, over MQTT 5 and 3.1.1:
    every one is stored, so packets spread over several reads are put back together."""
    big = client_module.RECEIVE_CHUNK + 100_000
    messages = [
        (topic, body if i % 2 else body[:-1] + b', "pad": "' + b"x" * big + b'"}')
        for i, (topic, body) in enumerate(stream("big", range(6)))
    ]
    for protocol in ("5", "3.1.1"):
        async with derim(
            mosquitto, tmp_path / protocol, mapping_file, mqtt_protocol=protocol
        ) as services:
            publisher = Publisher(mosquitto)
            await asyncio.to_thread(publisher.send, messages)
            publisher.close()
            await until_async(lambda: _count_is(services, "big", 6))
            assert services.mqtt is not None
            assert services.mqtt.counters.rejected == 0


async def test_malformed_payloads_are_dead_lettered_with_their_bytes(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """Bad JSON, a string power, NaN and an unmapped topic are each rejected, counted and kept
    with their raw payload; good messages around them are stored."""
    bad = [
        ("t/m2/telemetry", b"{not json"),
        ("t/m2/telemetry", json.dumps({"ts": T0_MS, "P": "high"}).encode()),
        ("t/m2/telemetry", b'{"ts": 1767225600000, "P": NaN}'),
        ("t/m2/telemetry", b"\xff\xfe"),
        ("t/m2/telemetry", json.dumps({"ts": T0_MS, "U": -5.0}).encode()),
    ]
    good = stream("m2", range(3))
    async with derim(mosquitto, tmp_path / "data", mapping_file) as services:
        publisher = Publisher(mosquitto, "bad-publisher")
        await asyncio.to_thread(publisher.send, [good[0], *bad, *good[1:]])
        publisher.close()
        mqtt = services.mqtt
        assert mqtt is not None
        await until(lambda: mqtt.counters.messages == len(bad) + len(good))
        assert mqtt.counters.rejected == len(bad)
        assert len(await stored(services, "m2")) == len(good)
        rejects = await services.rejects.latest(10)
        assert {r.payload for r in rejects} == {body for _, body in bad}
        reasons = " | ".join(r.reason for r in rejects)
        for expected in ("JSON", "UTF-8", "voltage_v"):
            assert expected in reasons


async def test_killed_middleware_loses_nothing_the_broker_delivered(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """A stream published while DERIM stops mid-way without acknowledging (its task cancelled
    between storing and acking, as in a crash) and then starts again: every message is stored
    exactly once per device timestamp (redelivered ones overwrite themselves)."""
    data_dir = tmp_path / "data"
    total = 3000
    publisher = Publisher(mosquitto, "stream-publisher")
    async with derim(mosquitto, data_dir, mapping_file, mqtt_client_id="derim-crash") as services:
        sender = asyncio.create_task(asyncio.to_thread(publisher.send, stream("m3", range(total))))
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records > 200)
        services.mqtt.client.ack = lambda messages: None  # type: ignore[method-assign]
    await sender
    publisher.close()
    async with derim(mosquitto, data_dir, mapping_file, mqtt_client_id="derim-crash") as services:
        times: list[int] = []
        for _ in range(300):
            times = await stored(services, "m3")
            if len(times) == total:
                break
            await asyncio.sleep(0.1)
        assert sorted(set(times)) == [T0_MS + i * 1000 for i in range(total)]
        assert len(times) == total


async def test_ingestion_resumes_after_a_broker_restart(
    fresh_mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """The broker restarts between two halves of a stream; DERIM reconnects, resumes its session
    and stores both halves (messages redelivered after the restart overwrite themselves)."""
    async with derim(fresh_mosquitto, tmp_path / "data", mapping_file) as services:
        publisher = Publisher(fresh_mosquitto, "restart-publisher")
        await asyncio.to_thread(publisher.send, stream("m4", range(100)))
        publisher.close()
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records == 100)
        await asyncio.to_thread(fresh_mosquitto.restart)
        await until(lambda: services.mqtt is not None and services.mqtt.client.subscribed,
                    timeout_s=15.0)  # fmt: skip
        publisher = Publisher(fresh_mosquitto, "restart-publisher-2")
        await asyncio.to_thread(publisher.send, stream("m4", range(100, 200)))
        publisher.close()
        # Acks the broker had not saved before the restart are redelivered: at least once.
        await until(lambda: services.mqtt is not None and services.mqtt.counters.records >= 200)
        await until_async(lambda: _count_is(services, "m4", 200))


async def test_a_broker_restart_takes_mqtt_devices_offline_and_back_as_events(
    fresh_mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """When the broker goes away and returns, each registered MQTT device is published going
    offline (from online) and then online again."""
    async with derim(fresh_mosquitto, tmp_path / "data", mapping_file) as services:
        publisher = Publisher(fresh_mosquitto, "events-publisher")
        await asyncio.to_thread(publisher.send, stream("m6", range(3)))
        publisher.close()
        await until(lambda: services.registry.find("m6") is not None)
        events = services.events.subscribe()
        try:
            await asyncio.to_thread(fresh_mosquitto.restart)
            seen: list[tuple[str, str]] = []
            async with asyncio.timeout(15):
                while ("device_online", "m6") not in seen:
                    event = await events.get()
                    seen.append((event.type.value, event.device_id))
                    if event.type.value == "device_offline":
                        assert event.data["previous"] == "online", event
            assert seen.index(("device_offline", "m6")) < seen.index(("device_online", "m6"))
        finally:
            events.close()


async def test_two_instances_split_a_shared_subscription(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """Two DERIM instances in one shared-subscription group: each stores part of the stream,
    together all of it, none of it twice."""
    total = 2000
    async with (
        derim(mosquitto, tmp_path / "a", mapping_file, mqtt_client_id="derim-a",
              mqtt_shared_group="derim") as first,
        derim(mosquitto, tmp_path / "b", mapping_file, mqtt_client_id="derim-b",
              mqtt_shared_group="derim") as second,
    ):  # fmt: skip
        publisher = Publisher(mosquitto, "shared-publisher")
        await asyncio.to_thread(publisher.send, stream("m5", range(total)))
        publisher.close()
        assert first.mqtt is not None
        assert second.mqtt is not None
        a, b = first.mqtt.counters, second.mqtt.counters
        await until(lambda: a.records + b.records >= total)
        times_a, times_b = await stored(first, "m5"), await stored(second, "m5")
        assert times_a
        assert times_b
        assert not set(times_a) & set(times_b)
        assert sorted(times_a + times_b) == [T0_MS + i * 1000 for i in range(total)]


@pytest.mark.parametrize(
    ("answer", "status"),
    [("acknowledged", CommandStatus.ACKNOWLEDGED), ("rejected", CommandStatus.REJECTED)],
)
async def test_commands_report_the_device_answer(
    mosquitto: Mosquitto,
    tmp_path: Path,
    mapping_file: Path,
    answer: str,
    status: CommandStatus,
) -> None:
    """A command goes to the device's command topic with a correlation id; the device's answer
    on the response topic is what the result says."""
    responder = Responder(mosquitto, answer)
    try:
        assert responder.subscribed.wait(5)
        async with derim(mosquitto, tmp_path / "data", mapping_file) as services:
            publisher = Publisher(mosquitto, "cmd-publisher")
            await asyncio.to_thread(publisher.send, [("t/m6/telemetry", payload(0))])
            publisher.close()
            await until(lambda: services.registry.find("m6") is not None)
            assert services.mqtt is not None
            command = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=2.0)
            result = await services.mqtt.send_to(services.registry.get("m6"), command)
            assert result.status is status, result.message
            assert responder.received[-1]["command"] == "set_power_limit"
            assert responder.received[-1]["command_id"] == str(result.command_id)
    finally:
        responder.close()


async def test_a_command_nobody_answers_times_out(
    mosquitto: Mosquitto, tmp_path: Path, mapping_file: Path
) -> None:
    """No device answers within the mapping's timeout: timed_out, never acknowledged."""
    async with derim(mosquitto, tmp_path / "data", mapping_file) as services:
        publisher = Publisher(mosquitto, "silent-publisher")
        await asyncio.to_thread(publisher.send, [("t/m7/telemetry", payload(0))])
        publisher.close()
        await until(lambda: services.registry.find("m7") is not None)
        assert services.mqtt is not None
        command = CommandRequest(command=CommandType.DISCONNECT)
        result = await services.mqtt.send_to(services.registry.get("m7"), command)
        assert result.status is CommandStatus.TIMED_OUT
