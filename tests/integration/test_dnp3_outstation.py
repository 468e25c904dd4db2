"""DERIM's DNP3 outstation against opendnp3's master on loopback, over the core services with
a simulated SunSpec site (PV inverter and battery over real Modbus TCP), a second inverter
whose server the test stops, and one device that never answers: points carry stored
telemetry, controls end as DERIM command records."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dnp3_master import COMM_LOST, ONLINE, Master, Points, crob, setpoint
from influxd import free_ports

from async_helpers import until, until_async
from derim.config import load_settings
from derim.errors import TransportError
from derim.grid.dnp3.config import Dnp3Config
from derim.grid.dnp3.outstation import Dnp3Outstation
from derim.grid.fleet import FleetAccess
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, ModbusConnection
from derim.services import Services, running_services
from derim.sim.sunspec_fleet import BATTERY_UNIT, PV_UNIT, SunSpecFleetSim
from derim.tasks import cancel_and_wait

SUNNY = datetime(2024, 6, 30, 17, 0, tzinfo=UTC)
"""A clear June noon at the simulator's weather station: the PV inverter runs near 87 % of its
8 kW, the battery charges on its schedule; a fixed clock keeps both steady."""

POINTS = {
    "analog_inputs": [
        {"index": 0, "device": "pv", "field": "power_kw", "scale": 1000},
        {"index": 1, "group": "site", "field": "power_kw", "scale": 1000},
        {"index": 2, "device": "bat", "field": "soc_percent", "scale": 10},
        {"index": 3, "device": "ghost", "field": "power_kw", "scale": 1000},
    ],
    "binary_inputs": [
        {"index": 0, "device": "pv", "kind": "online"},
        {"index": 1, "device": "pv", "kind": "connected"},
        {"index": 2, "device": "ghost", "kind": "online"},
    ],
    "analog_outputs": [
        {"index": 0, "device": "pv", "command": "set_power_limit", "scale": 1000},
        {"index": 1, "device": "ghost", "command": "set_power_limit", "scale": 1000},
        {"index": 2, "device": "far", "command": "set_power_limit", "scale": 1000},
    ],
    "binary_outputs": [{"index": 0, "device": "pv"}],
}


@dataclass
class Site:
    services: Services
    sim: SunSpecFleetSim
    far: SunSpecFleetSim
    master: Master


def sunspec(device_id: str, kind: DeviceType, port: int, unit: int, kw: float) -> DERDevice:
    connection = ModbusConnection(
        protocol="sunspec", host="127.0.0.1", port=port, unit_id=unit,
        poll_interval_s=0.2, timeout_s=1.0,
    )  # fmt: skip
    return DERDevice(
        id=device_id, device_type=kind, connection=connection, rated_power_kw=kw, groups=["site"]
    )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    sim = await SunSpecFleetSim(step_s=0.1, clock=lambda: SUNNY).start()
    far = await SunSpecFleetSim(step_s=0.1, clock=lambda: SUNNY).start()
    (nobody,) = free_ports(1)
    devices = [
        sunspec("pv", DeviceType.SOLAR_PV, sim.port, PV_UNIT, 8.0),
        sunspec("bat", DeviceType.BATTERY, sim.port, BATTERY_UNIT, 5.0),
        sunspec("far", DeviceType.SOLAR_PV, far.port, PV_UNIT, 8.0).model_copy(
            update={"groups": []}
        ),
        sunspec("ghost", DeviceType.SOLAR_PV, nobody, 1, 5.0).model_copy(update={"groups": []}),
    ]
    settings = load_settings(
        data_dir=tmp_path, devices=devices, control_wait_s=5.0, ocpp_enabled=False
    )
    config = Dnp3Config.model_validate({"port": 0, "refresh_interval_s": 0.1, **POINTS})
    try:
        async with running_services(settings) as services:
            outstation = Dnp3Outstation(config, services.fleet_access())
            running = asyncio.create_task(outstation.run())
            try:
                await stored(services, "pv", "bat", "far")
                await outstation.started()
                async with Master(outstation.port) as master:
                    yield Site(services, sim, far, master)
            finally:
                await outstation.aclose()
                await cancel_and_wait(running)
    finally:
        await sim.stop()
        await far.stop()


async def stored(services: Services, *device_ids: str) -> None:
    """Wait until each device has a stored reading."""

    async def present() -> bool:
        return len(await services.store.latest(device_ids)) == len(device_ids)

    await until_async(present)


async def latest(services: Services, device_id: str, name: str) -> float:
    value = (await services.store.latest([device_id]))[device_id][name]
    assert isinstance(value, int | float)
    return float(value)


async def commands(services: Services, device_id: str) -> list[CommandResult]:
    """The device's command records, newest first."""
    return await services.controller.store.for_device(device_id)


async def scan_until(master: Master, holds: Callable[[Points], bool]) -> Points:
    """Scan until ``holds(points)`` is true (the outstation refreshes every 0.1 s)."""
    async with asyncio.timeout(15):
        while not holds(points := await master.scan()):  # noqa: ASYNC110 - polling is the point
            await asyncio.sleep(0.1)
    return points


async def stored_analogs(services: Services) -> dict[int, tuple[float, int]]:
    """What analog inputs 0-2 carry once refreshed from the store's latest readings: the PV's
    power (W), the site group's sum (W) and the battery's SoC (0.1 %)."""
    pv_kw = await latest(services, "pv", "power_kw")
    bat_kw = await latest(services, "bat", "power_kw")
    soc = await latest(services, "bat", "soc_percent")
    return {
        0: (round(pv_kw * 1000), ONLINE),
        1: (round((pv_kw + bat_kw) * 1000), ONLINE),
        2: (round(soc * 10), ONLINE),
    }


async def test_master_reads_stored_telemetry_with_its_quality(site: Site) -> None:
    """Analog inputs carry the stored power (W), the group's sum and the SoC (0.1 %); binary
    inputs say the PV is online and connected; the silent device's points are COMM_LOST."""
    for _ in range(150):  # the outstation refreshes every 0.1 s: scan until it caught up
        expected = await stored_analogs(site.services)
        points = await site.master.scan()
        if {index: points.analogs[index] for index in expected} == expected:
            break
        await asyncio.sleep(0.1)
    assert {index: points.analogs[index] for index in expected} == expected
    assert expected[0][0] > 5000, "the sun is up"
    assert points.analogs[3][1] & (COMM_LOST | ONLINE) == COMM_LOST
    assert points.binaries[0] == (True, ONLINE | 0x80)
    assert points.binaries[1] == (True, ONLINE | 0x80)
    assert points.binaries[2] == (False, ONLINE)


async def test_analog_output_becomes_an_acknowledged_dnp3_power_limit(site: Site) -> None:
    """A direct-operated 3000 (W) on AO 0 is a 3 kW set_power_limit from source dnp3 that the
    inverter acknowledged before the master got SUCCESS; the PV's power then drops to it."""
    status = await site.master.operate(setpoint(3000), 0)
    (record, *_) = await commands(site.services, "pv")
    assert status == "SUCCESS"
    assert record.request.command is CommandType.SET_POWER_LIMIT
    assert record.request.source == "dnp3"
    assert record.request.value == pytest.approx(3.0)
    assert record.status is CommandStatus.ACKNOWLEDGED
    points = await scan_until(site.master, lambda p: p.analogs[0][0] <= 3000)
    assert points.analogs[0] == (3000, ONLINE)
    assert points.analog_outputs[0] == 3000


async def test_select_before_operate_checks_then_sends(site: Site) -> None:
    """SELECT is a dry run (a validated record, nothing sent), OPERATE sends: both records
    are from dnp3 and the second is acknowledged."""
    status = await site.master.operate(setpoint(4500), 0, select=True)
    sent, checked = (await commands(site.services, "pv"))[:2]
    assert status == "SUCCESS"
    assert checked.request.dry_run
    assert checked.status is CommandStatus.VALIDATED
    assert sent.status is CommandStatus.ACKNOWLEDGED
    assert {checked.request.source, sent.request.source} == {"dnp3"}
    assert sent.request.value == pytest.approx(4.5)


async def test_controls_that_cannot_be_carried_out_answer_their_error(site: Site) -> None:
    """An unmapped output and a plain pulse are NOT_SUPPORTED, a setpoint over the rating
    OUT_OF_RANGE, a limit for a device never reached NOT_SUPPORTED (its controls are
    unknown), and one for a device that went away DOWNSTREAM_FAIL, recorded as failed."""
    await site.far.stop()
    unmapped = await site.master.operate(setpoint(1000), 7)
    too_high = await site.master.operate(setpoint(9000), 0)
    pulse = await site.master.operate(crob("PULSE_ON"), 0)
    never_seen = await site.master.operate(setpoint(1000), 1)
    gone = await site.master.operate(setpoint(1000), 2)
    (failed,) = await commands(site.services, "far")
    assert (unmapped, too_high, pulse, never_seen, gone) == (
        "NOT_SUPPORTED",
        "OUT_OF_RANGE",
        "NOT_SUPPORTED",
        "NOT_SUPPORTED",
        "DOWNSTREAM_FAIL",
    )
    assert failed.request.source == "dnp3"
    assert failed.status is CommandStatus.FAILED
    assert await commands(site.services, "pv") == []
    assert await commands(site.services, "ghost") == []


async def test_crob_latches_disconnect_and_reconnect_the_inverter(site: Site) -> None:
    """LATCH_OFF on CROB 0 is an acknowledged disconnect: the connected input goes off;
    LATCH_ON connects it again and the input comes back on."""
    off = await site.master.operate(crob("LATCH_OFF"), 0)
    disconnected = await scan_until(site.master, lambda p: not p.binaries[1][0])
    on = await site.master.operate(crob("LATCH_ON"), 0)
    connected = await scan_until(site.master, lambda p: p.binaries[1][0])
    records = await commands(site.services, "pv")
    assert (off, on) == ("SUCCESS", "SUCCESS")
    assert disconnected.binaries[1] == (False, ONLINE)
    assert connected.binaries[1] == (True, ONLINE | 0x80)
    assert [r.request.command for r in records] == [CommandType.CONNECT, CommandType.DISCONNECT]
    assert all(r.status is CommandStatus.ACKNOWLEDGED for r in records)


async def test_an_address_in_use_is_a_transport_error() -> None:
    """run() fails with a TransportError naming the address when the port is taken, and
    aclose() afterwards returns at once."""

    async def submit(device_id: str, request: CommandRequest) -> CommandResult:
        raise AssertionError("no command expected")

    async def latest(device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        return {}

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Dnp3Config(
            port=port, binary_inputs=[{"index": 0, "group": "site", "kind": "online"}]
        )
        outstation = Dnp3Outstation(config, FleetAccess(submit, list, latest))
        with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
            await outstation.run()
    await outstation.aclose()
    assert outstation.state == "stopped"


async def test_state_says_whether_a_master_is_connected() -> None:
    """The outstation is "stopped" before run(), "master connected" while a master holds its
    connection, "listening" once the master left and "stopped" after aclose()."""

    async def submit(device_id: str, request: CommandRequest) -> CommandResult:
        raise AssertionError("no command expected")

    async def latest(device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        return {}

    config = Dnp3Config.model_validate({"port": 0, "analog_inputs": POINTS["analog_inputs"]})
    outstation = Dnp3Outstation(config, FleetAccess(submit, list, latest))
    before = outstation.state
    running = asyncio.create_task(outstation.run())
    try:
        await outstation.started()
        async with Master(outstation.port):
            connected = outstation.state
        await until(lambda: outstation.state == "listening")
    finally:
        await outstation.aclose()
        await cancel_and_wait(running)
    assert (before, connected, outstation.state) == ("stopped", "master connected", "stopped")
