"""POST /api/v1/control/{id} against a Modbus battery: checks, dry runs, writes and refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_server import ApiServer
from modbus_server import RegisterServer
from pymodbus.constants import ExcCodes

from async_helpers import until_async

UNIT = 2


@pytest.fixture
async def battery() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=512).start()
    yield server
    await server.stop()


@pytest.fixture
async def client(api: ApiServer, battery: RegisterServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        created = await http.post(
            "/api/v1/devices",
            json={"id": "bat", "device_type": "battery", "rated_power_kw": 4.0,
                  "connection": {"protocol": "modbus", "host": "127.0.0.1", "port": battery.port,
                                 "unit_id": UNIT, "profile": "generic_battery",
                                 "poll_interval_s": 5}},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert (await http.post("/api/v1/devices", json={"id": "pushed"})).status_code == 201
        yield http


async def send(client: httpx.AsyncClient, device: str, **command: Any) -> httpx.Response:
    return await client.post(f"/api/v1/control/{device}", json=command)


async def test_setpoint_is_written_and_confirmed(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """A setpoint within limits and rating is written once and acknowledged after read-back."""
    response = await send(client, "bat", command="set_active_power", value=-2.5)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "acknowledged"
    assert battery.writes == [(300, [(-250) & 0xFFFF])]


async def test_connect_and_disconnect_use_the_switch(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """connect/disconnect map to the profile's switch point."""
    assert (await send(client, "bat", command="disconnect")).json()["status"] == "acknowledged"
    assert (await send(client, "bat", command="connect")).json()["status"] == "acknowledged"
    assert battery.writes == [(301, [0]), (301, [1])]


@pytest.mark.parametrize(
    ("command", "field"),
    [
        ({"command": "set_active_power", "value": 4.5}, "value"),
        ({"command": "set_active_power"}, "value"),
        ({"command": "start_charging"}, "command"),
        ({"command": "set_active_power", "value": "lots"}, "body.value"),
    ],
)
async def test_invalid_commands_are_refused_before_sending(
    client: httpx.AsyncClient, battery: RegisterServer, command: dict[str, Any], field: str
) -> None:
    """Beyond the rating, missing values, unmapped commands: 422 naming the field, no write."""
    response = await send(client, "bat", **command)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    assert battery.writes == []


async def test_dry_run_validates_without_writing(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """dry_run answers 'validated' and leaves the device untouched."""
    response = await send(client, "bat", command="set_active_power", value=1.0, dry_run=True)
    assert response.json()["status"] == "validated"
    assert battery.writes == []


async def test_device_refusal_is_409_and_push_devices_take_no_commands(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """A Modbus exception is a 409 refusal; a device without an adapter cannot be commanded."""
    battery.exception = ExcCodes.ILLEGAL_VALUE
    refused = await send(client, "bat", command="set_active_power", value=1.0)
    assert refused.status_code == 409
    assert "exception 3" in refused.json()["detail"]
    pushed = await send(client, "pushed", command="set_active_power", value=1.0)
    assert pushed.status_code == 422
    assert (await send(client, "ghost", command="connect")).status_code == 404


async def test_device_limits_bound_setpoints(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """With limits, a battery at 15 % (minimum 20 %) is not discharged but may charge; a
    setpoint above its maximum or a jump faster than its ramp rate is 422 naming the bound;
    once it reads 50 % and enough time passed, the discharge goes through."""
    battery.set(2, [150])
    connection = {
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": battery.port,
        "unit_id": UNIT,
        "profile": "generic_battery",
        "poll_interval_s": 0.2,
    }
    created = await client.post("/api/v1/devices", json={
        "id": "bat-safe", "device_type": "battery", "rated_power_kw": 4.0,
        "limits": {"max_power_kw": 3.0, "soc_min_percent": 20, "ramp_kw_per_s": 1.0},
        "connection": connection})  # fmt: skip
    assert created.status_code == 201, created.text

    async def soc_is(percent: float) -> bool:
        latest = await client.get("/api/v1/telemetry/bat-safe/latest")
        return latest.status_code == 200 and latest.json().get("soc_percent") == percent

    await until_async(lambda: soc_is(15.0))
    refused = await send(client, "bat-safe", command="battery_discharge", value=1.0)
    assert refused.status_code == 422
    assert "limits.soc_min_percent" in refused.text
    charged = await send(client, "bat-safe", command="battery_charge", value=1.0)
    assert charged.json()["status"] == "acknowledged"
    jump = await send(client, "bat-safe", command="battery_charge", value=3.0)
    assert jump.status_code == 422
    assert "limits.ramp_kw_per_s" in jump.text
    too_much = await send(client, "bat-safe", command="set_active_power", value=3.5)
    assert "limits.max_power_kw" in too_much.text
    battery.set(2, [500])
    await until_async(lambda: soc_is(50.0))
    await asyncio.sleep(2.1)
    discharged = await send(client, "bat-safe", command="battery_discharge", value=1.0)
    assert discharged.json()["status"] == "acknowledged", discharged.text


async def test_a_setpoint_in_another_unit_than_the_point_is_refused(
    client: httpx.AsyncClient, battery: RegisterServer
) -> None:
    """100 W is not written as 100 kW: a value in a unit the point does not take is 422."""
    response = await send(client, "bat", command="set_active_power", value=100, unit="W")
    assert response.status_code == 422
    assert "unit" in {e["field"] for e in response.json()["errors"]}
    assert battery.writes == []
