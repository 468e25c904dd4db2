"""Hot add over the API: registering a Modbus device starts polling it; DELETE stops it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from api_server import ApiServer
from modbus_server import RegisterServer

from async_helpers import until_async

UNIT = 7


@pytest.fixture
async def meter() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=512).start()
    yield server
    await server.stop()


async def test_registered_modbus_device_is_polled_until_deleted(
    api: ApiServer, meter: RegisterServer
) -> None:
    """POST starts polling without a restart; status and data show it; DELETE stops it."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        bad = await client.post(
            "/api/v1/devices",
            json={
                "id": "m-bad",
                "device_type": "meter",
                "connection": {
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": meter.port,
                    "profile": "no_such_profile",
                },
            },
        )
        assert bad.status_code == 422
        assert any(e["field"] == "connection.profile" for e in bad.json()["errors"])
        created = await client.post(
            "/api/v1/devices",
            json={
                "id": "m-hot",
                "device_type": "meter",
                "connection": {
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": meter.port,
                    "unit_id": UNIT,
                    "profile": "generic_meter",
                    "poll_interval_s": 0.05,
                },
            },
        )
        assert created.status_code == 201, created.text

        async def online() -> bool:
            status = (await client.get("/api/v1/devices/m-hot")).json()["status"]
            return status is not None and status["state"] == "online"

        await until_async(online)
        device = (await client.get("/api/v1/devices/m-hot")).json()
        assert device["status"]["last_seen"] is not None

        async def has_data() -> bool:
            return (await client.get("/api/v1/telemetry/m-hot/latest")).status_code == 200

        await until_async(has_data)
        assert (await client.delete("/api/v1/devices/m-hot")).status_code == 204
        await asyncio.sleep(0.3)
        polls_after_delete = len(meter.reads)
        await asyncio.sleep(0.3)
        assert len(meter.reads) == polls_after_delete, "no reads after the device was deleted"
