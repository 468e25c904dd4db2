"""Live streaming over real HTTP: WebSocket and SSE clients get readings as they pass the bus,
filtered by device, type, group and field, with the API's keys; a slow client gets a gap notice
and slows nobody."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import ApiServer
from modbus_server import RegisterServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from async_helpers import until_async
from derim.config import load_settings
from derim.security.keys import KeyStore, Role


def ws_url(server: ApiServer, query: str = "") -> str:
    """The stream's WebSocket address on ``server``."""
    return server.url.replace("http://", "ws://") + "/api/v1/stream" + query


def readings(device_id: str, count: int, **fields: float) -> list[dict[str, Any]]:
    """``count`` readings of a device, one second apart, ending now."""
    now = datetime.now(UTC)
    return [
        {
            "device_id": device_id,
            "timestamp": (now - timedelta(seconds=count - i)).isoformat(),
            **fields,
        }
        for i in range(count)
    ]


async def next_message(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (others skipped), within 10 s."""
    async with asyncio.timeout(10):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] == kind:
                return message


@pytest.fixture
async def fleet(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    """A meter in group site-a, a PV inverter in group site-b."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        for device_id, kind, group in (("m1", "meter", "site-a"), ("pv1", "solar_pv", "site-b")):
            created = await http.post("/api/v1/devices", json={
                "id": device_id, "device_type": kind, "groups": [group]})  # fmt: skip
            assert created.status_code == 201
        yield http


async def test_websocket_filters_by_device_and_field(
    api: ApiServer, fleet: httpx.AsyncClient
) -> None:
    """The first frame is hello with the filter; then only m1's readings arrive, with only
    power_kw beside the keys."""
    async with connect(ws_url(api, "?device=m1&field=power_kw")) as ws:
        hello = await next_message(ws, "hello")
        assert hello["devices"] == ["m1"]
        assert hello["fields"] == ["power_kw"]
        await fleet.post("/api/v1/telemetry", json=readings("pv1", 2, power_kw=3.0))
        await fleet.post("/api/v1/telemetry", json=readings("m1", 3, power_kw=1.5, voltage_v=230.0))
        received: list[dict[str, Any]] = []
        while len(received) < 3:
            received += (await next_message(ws, "telemetry"))["records"]
        assert {r["device_id"] for r in received} == {"m1"}
        assert all(set(r) == {"device_id", "timestamp", "power_kw"} for r in received)
        assert [r["power_kw"] for r in received] == [1.5, 1.5, 1.5]


async def test_type_and_group_filters(api: ApiServer, fleet: httpx.AsyncClient) -> None:
    """``type=solar_pv`` passes only the PV inverter, ``group=site-a`` only the meter."""
    async with (
        connect(ws_url(api, "?type=solar_pv")) as by_type,
        connect(ws_url(api, "?group=site-a")) as by_group,
    ):
        await next_message(by_type, "hello")
        await next_message(by_group, "hello")
        await fleet.post(
            "/api/v1/telemetry",
            json=readings("m1", 1, power_kw=1.0) + readings("pv1", 1, power_kw=2.0),
        )
        assert {r["device_id"] for r in (await next_message(by_type, "telemetry"))["records"]} == {
            "pv1"
        }
        assert {r["device_id"] for r in (await next_message(by_group, "telemetry"))["records"]} == {
            "m1"
        }


async def test_sse_streams_the_same_messages(api: ApiServer, fleet: httpx.AsyncClient) -> None:
    """Server-Sent Events carry hello, then telemetry, with the message type as event name."""
    async with fleet.stream("GET", "/api/v1/stream/sse", params={"device": "pv1"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        events: list[tuple[str, dict[str, Any]]] = []
        name = ""
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    if name == "hello":
                        await fleet.post("/api/v1/telemetry", json=readings("pv1", 1, power_kw=4.2))
                    if name == "telemetry":
                        break
        assert [n for n, _ in events] == ["hello", "telemetry"]
        assert events[1][1]["records"][0]["power_kw"] == 4.2


async def test_bad_filters_are_refused(api: ApiServer, fleet: httpx.AsyncClient) -> None:
    """An unknown device type or field closes the WebSocket with 1008 naming it; SSE says 422."""
    with pytest.raises(ConnectionClosed) as closed:
        async with connect(ws_url(api, "?type=toaster")) as ws:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert "toaster" in closed.value.rcvd.reason
    response = await fleet.get("/api/v1/stream/sse", params={"field": "colour"})
    assert response.status_code == 422
    assert "colour" in response.text


async def test_many_batches_reach_a_reading_client_whole(tmp_path: Path) -> None:
    """150 batches of 500 readings reach a WebSocket client that reads, every reading once, and
    nothing is dropped on the way to storage."""
    server = ApiServer(tmp_path).start()
    batches, size = 150, 500
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            connect(ws_url(server, "?device=m9"), max_size=None) as client,
        ):
            await next_message(client, "hello")
            await http.post("/api/v1/devices", json={"id": "m9", "device_type": "meter"})
            stamps: set[str] = set()
            start = datetime.now(UTC) - timedelta(days=1)
            for batch in range(batches):
                body = [
                    {"device_id": "m9", "power_kw": 1.0,
                     "timestamp": (start + timedelta(seconds=batch * size + i)).isoformat()}
                    for i in range(size)
                ]  # fmt: skip
                assert (await http.post("/api/v1/telemetry", json=body)).status_code == 202
                while len(stamps) < (batch + 1) * size:
                    records = (await next_message(client, "telemetry"))["records"]
                    stamps.update(r["timestamp"] for r in records)
            assert len(stamps) == batches * size
            assert (await http.get("/health")).json()["ingest"]["dropped"] == 0
    finally:
        server.stop()


async def test_streams_need_a_viewer_key(tmp_path: Path) -> None:
    """With authentication on, no key closes the WebSocket with 4401 and SSE answers 401; a
    viewer key in ``api_key`` (browsers cannot set headers) or a header is accepted."""
    settings = load_settings(data_dir=tmp_path)
    keys = KeyStore(settings.data_dir / "keys.db")
    keys.open_sync()
    token = keys.create("dashboard", Role.VIEWER)[1]
    keys.close()
    server = ApiServer(tmp_path, auth_enabled=True).start()
    try:
        with pytest.raises(ConnectionClosed) as closed:
            async with connect(ws_url(server)) as ws:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
        async with connect(ws_url(server, f"?api_key={token}")) as ws:
            assert (await next_message(ws, "hello"))["events"] is True
        async with connect(ws_url(server), additional_headers={"X-API-Key": token}) as ws:
            await next_message(ws, "hello")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/api/v1/stream/sse")).status_code == 401
            document = await http.get("/api/v1/stream/asyncapi.json", headers={"X-API-Key": token})
            assert document.status_code == 200
            assert set(document.json()["components"]["messages"]) == {
                "HelloMessage", "TelemetryMessage", "EventMessage", "GapMessage"}  # fmt: skip
    finally:
        server.stop()


async def test_events_reach_the_stream(api: ApiServer) -> None:
    """A client first gets its devices' current state, then a command's result and the device
    going offline when its Modbus server stops."""
    battery = await RegisterServer(unit_id=2, size=512).start()
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            created = await http.post("/api/v1/devices", json={
                "id": "bat-s", "device_type": "battery", "rated_power_kw": 4.0,
                "connection": {"protocol": "modbus", "host": "127.0.0.1", "port": battery.port,
                               "unit_id": 2, "profile": "generic_battery",
                               "poll_interval_s": 0.2, "timeout_s": 0.5}})  # fmt: skip
            assert created.status_code == 201, created.text
            await until_async(lambda: is_online(http, "bat-s"))
            async with connect(ws_url(api, "?device=bat-s&events=true")) as ws:
                snapshot = await next_message(ws, "event")
                assert (snapshot["event"], snapshot["data"]["snapshot"]) == ("device_online", True)
                answer = await http.post("/api/v1/control/bat-s", json={
                    "command": "set_active_power", "value": -1.0})  # fmt: skip
                assert answer.json()["status"] == "acknowledged", answer.text
                result = await next_message(ws, "event")
                assert result["event"] == "command_result"
                assert result["data"]["status"] == "acknowledged"
                await battery.stop()
                stopped = True
                offline = await next_message(ws, "event")
                assert offline["event"] == "device_offline"
                assert offline["data"]["previous"] == "online"
    finally:
        if not stopped:
            await battery.stop()


async def is_online(http: httpx.AsyncClient, device_id: str) -> bool:
    """Whether the API reports the device online."""
    status = (await http.get(f"/api/v1/devices/{device_id}")).json().get("status") or {}
    return bool(status.get("state") == "online")


async def test_the_periodic_scan_streams_new_anomalies(tmp_path: Path) -> None:
    """With a scan every half second, a household meter's four frozen hours reach a stream
    client as an anomaly event without anyone asking for anomalies."""
    server = ApiServer(tmp_path, anomaly_scan_interval_s=0.5).start()
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            connect(ws_url(server, "?device=house")) as ws,
        ):
            await http.post("/api/v1/devices", json={
                "id": "house", "device_type": "load", "rated_power_kw": 10})  # fmt: skip
            end = datetime.now(UTC).replace(second=0, microsecond=0)
            body = []
            for step in range(4 * 24, 0, -1):
                at = end - timedelta(minutes=15 * step)
                frozen = 30 <= step < 46
                power = -1.234 if frozen else -(1.0 + 0.5 * ((step * 7) % 11) / 10)
                body.append({"device_id": "house", "timestamp": at.isoformat(), "power_kw": power})
            assert (await http.post("/api/v1/telemetry", json=body)).status_code == 202
            event = await next_message(ws, "event")
            while event["event"] != "anomaly":
                event = await next_message(ws, "event")
            assert event["data"]["kind"] == "stuck"
    finally:
        server.stop()
