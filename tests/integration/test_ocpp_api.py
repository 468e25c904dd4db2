"""Chargers through the HTTP API: device view, control, sessions, site limits, health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from api_server import ApiServer

from async_helpers import until_async
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "data").start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def connected(
    client: httpx.AsyncClient, charge_point_id: str
) -> AsyncIterator[SimulatedCharger]:
    """A simulated 2.0.1 charger connected to the API server's central system."""
    port = (await client.get("/health")).json()["ocpp"]["port"]
    sim = SimulatedCharger(
        charge_point_id,
        f"ws://127.0.0.1:{port}/ocpp",
        version="2.0.1",
        meter_interval_s=0.1,
        reconnect_s=0.2,
        vendor="Acme",
        model="DC-50",
    )
    task = asyncio.create_task(sim.run())
    try:
        await asyncio.wait_for(sim.connected.wait(), 10)
        yield sim
    finally:
        await cancel_and_wait(task)


async def test_a_charger_is_shown_controlled_and_its_sessions_listed(api: ApiServer) -> None:
    """The device view shows the booted charger online with its connectors; a start command
    over HTTP is acknowledged, the running session is listed, and after a stop the session
    shows its energy and duration."""
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
        connected(client, "CP-http"),
    ):

        async def booted() -> bool:
            body = (await client.get("/api/v1/devices/CP-http")).json()
            return body.get("model") == "DC-50" and bool(body["charger"]["connectors"])

        await until_async(booted)
        device = (await client.get("/api/v1/devices/CP-http")).json()
        assert device["device_type"] == "ev_charger"
        assert device["status"]["state"] == "online"
        assert device["charger"]["ocpp_version"] == "2.0.1"
        assert device["charger"]["connectors"][0]["status"] == "available"
        start = await client.post(
            "/api/v1/control/CP-http",
            json={"command": "start_charging", "parameters": {"id_tag": "HTTPTAG"}},
        )
        assert start.status_code == 200, start.text
        assert start.json()["status"] == "acknowledged"

        async def running() -> bool:
            sessions = await client.get(
                "/api/v1/devices/CP-http/sessions", params={"state": "active"}
            )
            return len(sessions.json()) == 1

        await until_async(running)
        await asyncio.sleep(0.3)
        stop = await client.post("/api/v1/control/CP-http", json={"command": "stop_charging"})
        assert stop.json()["status"] == "acknowledged"

        async def ended() -> bool:
            sessions = (await client.get("/api/v1/devices/CP-http/sessions")).json()
            return bool(sessions) and sessions[0]["state"] == "completed"

        await until_async(ended)
        (session,) = (await client.get("/api/v1/devices/CP-http/sessions")).json()
        assert session["id_tag"] == "HTTPTAG"
        assert session["energy_kwh"] > 0
        assert session["duration_s"] > 0.2
        health = (await client.get("/health")).json()["ocpp"]
        assert health["connected"] == 1
        assert health["messages"] > 3


async def test_commands_to_offline_or_unknown_chargers_fail_clearly(api: ApiServer) -> None:
    """A registered charger that is not connected answers 503 at once; an unknown device 404;
    its sessions 404 too; a command chargers cannot take 422."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        created = await client.post(
            "/api/v1/devices",
            json={
                "id": "cp-away",
                "device_type": "ev_charger",
                "connection": {"protocol": "ocpp", "charge_point_id": "CP-AWAY"},
            },
        )
        assert created.status_code == 201
        offline = await client.post("/api/v1/control/cp-away", json={"command": "reset"})
        assert offline.status_code == 503
        assert "not connected" in offline.json()["detail"]
        unknown = await client.post("/api/v1/control/nobody", json={"command": "reset"})
        assert unknown.status_code == 404
        assert (await client.get("/api/v1/devices/nobody/sessions")).status_code == 404
        wrong = await client.post(
            "/api/v1/control/cp-away", json={"command": "set_power_factor", "value": 0.9}
        )
        assert wrong.status_code == 422


async def test_site_limits_over_http(api: ApiServer) -> None:
    """A site limit is set, listed, split to the running session and removed; a negative,
    non-finite or malformed limit is 422."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        await client.post(
            "/api/v1/devices",
            json={
                "id": "CP-site",
                "device_type": "ev_charger",
                "groups": ["yard"],
                "connection": {"protocol": "ocpp", "charge_point_id": "CP-site"},
            },
        )
        for body in ({"limit_kw": -1}, {"limit_kw": "NaN"}, {"limit": 3}, {"limit_kw": 1e9}):
            assert (await client.put("/api/v1/sites/yard/limit", json=body)).status_code == 422
        async with connected(client, "CP-site") as sim:
            await sim.plug_in(1, ev_max_kw=11.0)
            view = (await client.put("/api/v1/sites/yard/limit", json={"limit_kw": 4.0})).json()
            assert view["limit_kw"] == 4.0

            async def shared() -> bool:
                site = (await client.get("/api/v1/sites/yard")).json()
                return [s["limit_kw"] for s in site["shares"]] == [4.0]

            await until_async(shared)
            assert [s["site"] for s in (await client.get("/api/v1/sites")).json()] == ["yard"]
            cleared = (await client.delete("/api/v1/sites/yard/limit")).json()
            assert cleared["limit_kw"] is None
            assert (await client.get("/api/v1/sites")).json() == []


async def test_deleting_a_connected_charger_closes_its_connection(tmp_path: Path) -> None:
    """DELETE of a connected charger's device closes the charger's WebSocket; with unknown
    chargers refused, its reconnection is then refused too."""
    server = ApiServer(tmp_path / "data", ocpp_register_unknown=False).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await client.post(
                "/api/v1/devices",
                json={
                    "id": "cp-del",
                    "device_type": "ev_charger",
                    "connection": {"protocol": "ocpp", "charge_point_id": "CP-DEL"},
                },
            )
            async with connected(client, "CP-DEL") as sim:
                assert (await client.delete("/api/v1/devices/cp-del")).status_code == 204

                async def gone() -> bool:
                    return (await client.get("/health")).json()["ocpp"]["connected"] == 0

                await until_async(gone)
                await asyncio.sleep(0.5)
                assert not sim.connected.is_set()
                assert (await client.get("/health")).json()["ocpp"]["refused_handshakes"] >= 1
    finally:
        server.stop()
