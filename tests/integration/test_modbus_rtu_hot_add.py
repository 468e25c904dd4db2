"""Hot add over the API of a Modbus RTU meter on a pseudo-terminal line; DELETE stops polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_server import ApiServer
from modbus_server import RtuServer

from async_helpers import until, until_async
from derim.sim.meter import IMAGE_SIZE, MeterValues, meter_image
from derim.sim.server import SimUnit

UNIT = 9
BAUDRATE = 38400
POLL_INTERVAL_S = 0.05
METER = MeterValues(power_kw=2.75, voltage_v=232.4, current_a=12.5, energy_export_kwh=321.0)


@pytest.fixture
async def rtu_meter(serial_pair: tuple[str, str]) -> AsyncIterator[SimUnit]:
    unit = SimUnit(UNIT, IMAGE_SIZE)
    unit.set(0, meter_image(METER))
    server = await RtuServer(unit, serial_pair[0], baudrate=BAUDRATE).start()
    yield unit
    await server.stop()


async def test_registered_rtu_device_is_polled_until_deleted(
    api: ApiServer, rtu_meter: SimUnit, serial_pair: tuple[str, str]
) -> None:
    """POST with a serial port starts RTU polling: telemetry arrives and the device is online;
    DELETE stops it, and no request reaches the line afterwards."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        created = await client.post(
            "/api/v1/devices",
            json={
                "id": "rtu-meter",
                "device_type": "meter",
                "connection": {
                    "protocol": "modbus",
                    "serial_port": serial_pair[1],
                    "baudrate": BAUDRATE,
                    "unit_id": UNIT,
                    "profile": "generic_meter",
                    "poll_interval_s": POLL_INTERVAL_S,
                },
            },
        )
        assert created.status_code == 201, created.text
        records: list[dict[str, Any]] = []

        async def has_data() -> bool:
            response = await client.get("/api/v1/telemetry/rtu-meter")
            assert response.status_code == 200, response.text
            records[:] = response.json()["records"]
            return bool(records)

        await until_async(has_data)
        assert records[0]["power_kw"] == pytest.approx(METER.power_kw)
        assert records[0]["voltage_v"] == pytest.approx(METER.voltage_v)
        assert records[0]["current_a"] == pytest.approx(METER.current_a)
        assert records[0]["energy_export_kwh"] == pytest.approx(METER.energy_export_kwh)

        async def online() -> bool:
            status = (await client.get("/api/v1/devices/rtu-meter")).json()["status"]
            return status is not None and status["state"] == "online"

        await until_async(online)
        polled = len(rtu_meter.reads)
        await until(lambda: len(rtu_meter.reads) >= polled + 4)

        assert (await client.delete("/api/v1/devices/rtu-meter")).status_code == 204
        assert (await client.get("/api/v1/devices/rtu-meter")).status_code == 404
        await asyncio.sleep(5 * POLL_INTERVAL_S)  # a request already on the line may land
        reads_after_delete = len(rtu_meter.reads)
        await asyncio.sleep(10 * POLL_INTERVAL_S)
        assert len(rtu_meter.reads) == reads_after_delete, "no reads after the device was deleted"
