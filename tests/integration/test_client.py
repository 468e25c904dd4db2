"""``derim.client`` against the real API over HTTP: the sync client registers, ingests, pages
and downsamples, streams over SSE; the async client controls a Modbus battery, schedules and
streams over the WebSocket; errors arrive as the client's classes with the server's detail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api_server import ApiServer
from influxd import free_ports
from modbus_server import RegisterServer

from derim.api.streaming import EventMessage, TelemetryMessage
from derim.bus.events import EventType
from derim.client import (
    AsyncDerimClient,
    AuthError,
    BadRequestError,
    DerimClient,
    DeviceView,
    RequestConflictError,
    ResourceNotFoundError,
    ServerUnreachableError,
)
from derim.client.twin_models import Scenario
from derim.control.schedules import ScheduleEntry, ScheduleRequest
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, DevicePatch
from derim.models.telemetry import MeterTelemetry
from derim.security.keys import KeyStore, Role

UNIT = 2
START = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
METER = DERDevice(id="m1", name="Meter", device_type=DeviceType.METER, groups=["site-a"])


def minutes(count: int, start: datetime = START) -> list[MeterTelemetry]:
    """``count`` readings of m1, one a minute from ``start``, power 0.0, 0.1, 0.2, ... kW."""
    return [
        MeterTelemetry(device_id="m1", timestamp=start + timedelta(minutes=i), power_kw=i / 10)
        for i in range(count)
    ]


@pytest.fixture
def client(api: ApiServer) -> Iterator[DerimClient]:
    with DerimClient(api.url, timeout_s=10) as http:
        yield http


@pytest.fixture
async def battery() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=512).start()
    yield server
    await server.stop()


def test_sync_client_registers_ingests_pages_downsamples_and_removes(client: DerimClient) -> None:
    """A device made from the server's model comes back as a DeviceView; 120 readings come back
    whole over cursor pages, as two hourly maxima, as CSV and as the latest; a removed device is
    ResourceNotFoundError naming it."""
    created = client.create_device(METER)
    assert isinstance(created, DeviceView)
    assert created.groups == ["site-a"]
    assert client.ingest(minutes(120)) == 120
    end = START + timedelta(hours=2)
    first = client.telemetry("m1", start=START, end=end, limit=50)
    assert first.count == 50
    assert first.next_cursor is not None
    everything = list(client.iter_telemetry("m1", start=START, end=end, page_size=50))
    assert [r["power_kw"] for r in everything] == [i / 10 for i in range(120)]
    hourly = client.telemetry("m1", start=START, end=end, every="1h", agg="max")
    assert [r["power_kw"] for r in hourly.records] == [5.9, 11.9]
    assert list(hourly.to_pandas().index) == [START, START + timedelta(hours=1)]
    csv = client.telemetry_csv("m1", start=START, end=end, fields=["power_kw"], limit=2)
    assert csv.splitlines()[0] == "timestamp,power_kw"
    assert client.latest("m1")["power_kw"] == 11.9
    assert [d.id for d in client.list_devices(group="site-a")] == ["m1"]
    assert client.update_device("m1", DevicePatch(name="Meter one")).name == "Meter one"
    client.delete_device("m1", purge_telemetry=True)
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_device("m1")
    assert caught.value.status == 404
    assert "'m1'" in caught.value.detail


def test_sync_client_raises_the_server_problems(client: DerimClient) -> None:
    """A bad reading is BadRequestError naming the field; a bad query parameter the same; a
    duplicate id RequestConflictError; an untrained forecast ResourceNotFoundError."""
    client.create_device(METER)
    bad = {"device_id": "m1", "timestamp": START.isoformat(), "power_kw": "lots"}
    with pytest.raises(BadRequestError) as caught:
        client.ingest([bad])
    assert caught.value.status == 422
    assert any("power_kw" in field for field in caught.value.fields), caught.value.errors
    with pytest.raises(BadRequestError) as caught:
        client.telemetry("m1", limit=0)
    assert caught.value.fields == {"query.limit"}
    with pytest.raises(RequestConflictError, match="already exists"):
        client.create_device(METER)
    with pytest.raises(ResourceNotFoundError):
        client.forecast("m1")


def test_sync_client_simulates_a_what_if(client: DerimClient) -> None:
    """The twin's simulation answers with its model: a PV surplus charges the battery."""
    scenario = Scenario.model_validate({"start": START, "load_kw": [1.0, 1.0],
        "pv_kw": [4.0, 4.0], "battery": {"capacity_kwh": 10, "power_kw": 2,
        "initial_soc": 0.5, "schedule_kw": [-2.0, -2.0]}})  # fmt: skip
    result = client.simulate(scenario)
    assert result.times == [START, START + timedelta(minutes=15)]
    assert result.battery_kw == [-2.0, -2.0]


def test_sync_stream_delivers_readings_as_they_are_ingested(client: DerimClient) -> None:
    """The SSE stream starts with hello naming the filter, then brings m1's new readings with
    only the asked field beside the keys."""
    client.create_device(METER)
    with client.stream(devices=["m1"], fields=["power_kw"], events=False) as stream:
        assert stream.hello is not None
        assert stream.hello.devices == ["m1"]
        client.ingest(minutes(3, datetime.now(UTC) - timedelta(minutes=5)))
        received: list[dict[str, object]] = []
        for message in stream:
            assert isinstance(message, TelemetryMessage)
            received += message.records
            if len(received) >= 3:
                break
    assert [r["power_kw"] for r in received] == [0.0, 0.1, 0.2]
    assert all(set(r) == {"device_id", "timestamp", "power_kw"} for r in received)


async def test_async_client_controls_schedules_and_streams(
    api: ApiServer, battery: RegisterServer
) -> None:
    """A setpoint to a Modbus battery is written and acknowledged, recorded, and announced on
    the WebSocket stream; an over-rating one is BadRequestError naming value; a schedule is
    created, listed and cancelled."""
    async with AsyncDerimClient(api.url, timeout_s=10) as client:
        connection = {"protocol": "modbus", "host": "127.0.0.1", "port": battery.port,
                      "unit_id": UNIT, "profile": "generic_battery"}  # fmt: skip
        device = {"id": "bat", "device_type": "battery", "rated_power_kw": 4.0,
                  "connection": {**connection, "poll_interval_s": 5}}  # fmt: skip
        await client.create_device(device)
        async with client.stream(devices=["bat"]) as stream:
            assert stream.hello is not None
            assert stream.hello.events
            request = CommandRequest(command=CommandType.SET_ACTIVE_POWER, value=-2.5)
            record = await client.send_command("bat", request)
            assert record.status is CommandStatus.ACKNOWLEDGED
            assert battery.writes == [(300, [(-250) & 0xFFFF])]
            async with asyncio.timeout(10):
                async for message in stream:
                    if isinstance(message, EventMessage) and (
                        message.event is EventType.COMMAND_RESULT
                    ):
                        break
            assert message.data["command_id"] == str(record.command_id)
        assert (await client.get_command(str(record.command_id))).status is record.status
        assert [r.command_id for r in await client.device_commands("bat")] == [record.command_id]
        with pytest.raises(BadRequestError) as caught:
            await client.send_command("bat", {"command": "set_active_power", "value": 4.5})
        assert "value" in caught.value.fields
        entry = ScheduleEntry(at=datetime.now(UTC) + timedelta(hours=1),
                              command=CommandType.SET_ACTIVE_POWER, value=1.0)  # fmt: skip
        schedule = await client.create_schedule(ScheduleRequest(device_id="bat", entries=[entry]))
        assert [s.schedule_id for s in await client.list_schedules()] == [schedule.schedule_id]
        cancelled = await client.cancel_schedule(str(schedule.schedule_id))
        assert cancelled.cancelled
        assert (await client.get_schedule(str(schedule.schedule_id))).cancelled


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[ApiServer, dict[Role, str]]]:
    """The API with authentication on, and a token for each role."""
    store = KeyStore(tmp_path / "keys.db")
    store.open_sync()
    tokens = {role: store.create(f"test-{role.value}", role)[1] for role in Role}
    store.close()
    server = ApiServer(tmp_path, auth_enabled=True).start()
    yield server, tokens
    server.stop()


async def test_keys_are_presented_and_refusals_are_auth_errors(
    secured: tuple[ApiServer, dict[Role, str]],
) -> None:
    """With a key the client is let in (REST and WebSocket); without one it is AuthError 401,
    with too weak a role AuthError 403, on the stream as on REST."""
    server, tokens = secured
    async with AsyncDerimClient(server.url, api_key=tokens[Role.VIEWER]) as viewer:
        assert await viewer.list_devices() == []
        async with viewer.stream() as stream:
            assert stream.hello is not None
        with pytest.raises(AuthError) as caught:
            await viewer.create_device(METER)
        assert caught.value.status == 403
    async with AsyncDerimClient(server.url) as anonymous:
        with pytest.raises(AuthError) as caught:
            await anonymous.list_devices()
        assert caught.value.status == 401
        with pytest.raises(AuthError) as caught:
            async with anonymous.stream():
                pass
        assert caught.value.status == 401


async def test_a_server_that_is_not_there_is_unreachable() -> None:
    """Nothing listening: ServerUnreachableError from both clients and the stream."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with DerimClient(url) as client, pytest.raises(ServerUnreachableError):
        client.health()
    async with AsyncDerimClient(url) as aclient:
        with pytest.raises(ServerUnreachableError):
            await aclient.health()
        with pytest.raises(ServerUnreachableError):
            async with aclient.stream():
                pass
