"""The IEEE 2030.5 client against a 2030.5 server on loopback (mutual TLS, every body checked
against the sep2 XSD) steering a simulated SunSpec inverter through the real control layer.

No independent 2030.5 server runs here (the gridappsd-2030-5 server needs another Python), so
the server is the one in ``sep2_server.py``, built from the same schema models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from envoy_schema.server.schema.sep2.der import (
    DERControlBase,
    DERSettings,
    DERStatus,
    PowerFactorWithExcitation,
)
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReadingRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlAnswer
from envoy_schema.server.schema.sep2.response import ResponseType
from pydantic import ValidationError
from sep2_server import Pki, Program, Sep2Server, client_certificate, der_control, make_pki

from async_helpers import until_async
from derim.config import load_settings
from derim.errors import TransportError
from derim.grid.sep2.client import Sep2Link
from derim.grid.sep2.config import EndDeviceMapping, Sep2Config, lfdi_of_pem
from derim.grid.sep2.reports import PlainDERCapability
from derim.models.command import CommandResult, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, ModbusConnection
from derim.services import Services, running_services
from derim.sim.sunspec_fleet import PV_UNIT, SunSpecFleetSim
from derim.tasks import cancel_and_wait

SUNNY = datetime(2024, 6, 30, 17, 0, tzinfo=UTC)
OTHER_SITE = "0123456789ABCDEF0123456789ABCDEF01234567"
"""An EndDevice on the server that no mapping names: the client must leave it alone."""


@dataclass
class Rig:
    pki: Pki
    server: Sep2Server
    services: Services
    sim: SunSpecFleetSim
    lfdi: str

    def config(self, **changes: object) -> Sep2Config:
        fields: dict[str, object] = {
            "server_url": self.server.url, "client_cert": self.pki.client_cert,
            "client_key": self.pki.client_key, "ca_cert": self.pki.ca, "poll_interval_s": 0.2,
            "end_devices": [EndDeviceMapping(device_ids=["pv"], reading_device_ids=["pv"])],
        }  # fmt: skip
        return Sep2Config.model_validate(fields | changes)

    def link(self, clock: Callable[[], float] = time.time, **changes: object) -> Sep2Link:
        return Sep2Link(self.config(**changes), self.services.fleet_access(), clock=clock)

    async def commands(self) -> list[CommandResult]:
        """The inverter's commands from the sep2 link, oldest first."""
        records = await self.services.controller.store.for_device("pv")
        return [r for r in reversed(records) if r.request.source == "sep2"]

    def answers(self) -> list[tuple[str, ResponseType]]:
        """(event mRID, response status) of each Response the server took, in order."""
        parsed = [ControlAnswer.from_xml(b) for b in self.server.bodies("/rsps/1/rsp")]
        return [(a.subject, ResponseType(a.status)) for a in parsed if a.status is not None]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pki = make_pki(tmp_path / "pki")
    lfdi = lfdi_of_pem(pki.client_cert)
    server = await Sep2Server(pki, [OTHER_SITE, lfdi]).start()
    sim = await SunSpecFleetSim(pv_rating_w=8000, step_s=3600, clock=lambda: SUNNY).start()
    pv = DERDevice(
        id="pv",
        device_type=DeviceType.SOLAR_PV,
        rated_power_kw=8.0,
        connection=ModbusConnection(protocol="sunspec", host="127.0.0.1", port=sim.port,
                                    unit_id=PV_UNIT, poll_interval_s=0.2),
    )  # fmt: skip
    settings = load_settings(data_dir=tmp_path / "data", devices=[pv], control_wait_s=5.0)
    try:
        async with running_services(settings) as services:
            yield Rig(pki, server, services, sim, lfdi)
    finally:
        await sim.stop()
        await server.stop()


def limit(percent: float) -> DERControlBase:
    """opModMaxLimW as sent on the wire: hundredths of a percent of setMaxW."""
    return DERControlBase(opModMaxLimW=round(percent * 100))


async def test_active_limit_is_applied_superseded_and_cleared_on_cancel(rig: Rig) -> None:
    """An active 50 % opModMaxLimW becomes a 4 kW limit (source sep2, expiring at the event's
    end) that the inverter acknowledges; a newer 25 % event supersedes it (2 kW); cancelling
    that one clears the limit; Responses follow responseRequired; every body is XSD-valid."""
    now = int(time.time())
    first = der_control("A" * 32, limit(50), now - 10, 600, created=now - 20, status=1)
    program = Program("curtail", primacy=1, controls=[first])
    rig.server.programs.append(program)
    link = rig.link()
    try:
        await link.poll_once()
        (applied,) = await rig.commands()
        assert applied.status is CommandStatus.ACKNOWLEDGED, applied.message
        assert applied.request.command is CommandType.SET_POWER_LIMIT
        assert (applied.request.value, applied.request.unit) == (4.0, "kW")
        assert applied.request.expires_at == datetime.fromtimestamp(now + 590, UTC)
        await link.poll_once()
        assert len(await rig.commands()) == 1, "an unchanged control is not sent again"

        second = der_control("B" * 32, limit(25), now - 5, 600, created=now - 5, status=1)
        program.controls.append(second)
        await link.poll_once()
        superseding = (await rig.commands())[-1]
        assert superseding.status is CommandStatus.ACKNOWLEDGED, superseding.message
        assert superseding.request.value == 2.0

        second.EventStatus_.currentStatus = 2
        first.EventStatus_.currentStatus = 4
        await link.poll_once()
        cleared = (await rig.commands())[-1]
        assert cleared.request.command is CommandType.CLEAR_POWER_LIMIT
        assert cleared.status is CommandStatus.ACKNOWLEDGED, cleared.message
    finally:
        await link.aclose()
    answers = rig.answers()
    assert [status for mrid, status in answers if mrid == "A" * 32] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_STARTED,
        ResponseType.EVENT_SUPERSEDED,
    ]
    assert [status for mrid, status in answers if mrid == "B" * 32] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_STARTED,
        ResponseType.EVENT_CANCELLED,
    ]
    assert all(ControlAnswer.from_xml(b).endDeviceLFDI == rig.lfdi
               for b in rig.server.bodies("/rsps/1/rsp"))  # fmt: skip
    assert rig.server.invalid == []
    assert rig.server.peers == {rig.lfdi}


async def test_disconnect_and_power_factor_last_until_the_event_completes(rig: Rig) -> None:
    """opModConnect false and an absorbing opModFixedPFInjectW 0.9 become disconnect and
    set_power_factor -0.9 on the inverter; once the event is over the inverter is reconnected
    and EVENT_COMPLETED is posted."""
    now = int(time.time())
    base = DERControlBase(
        opModConnect=False,
        opModFixedPFInjectW=PowerFactorWithExcitation(
            displacement=90, excitation=True, multiplier=-2
        ),
    )
    event = der_control("D" * 32, base, now - 10, 600, created=now - 20, status=1)
    rig.server.programs.append(Program("trip", primacy=0, controls=[event]))
    offset = 0.0
    link = rig.link(clock=lambda: time.time() + offset)
    try:
        await link.poll_once()
        offset = 700.0
        await link.poll_once()
    finally:
        await link.aclose()
    sent = [(r.request.command, r.request.value, r.status) for r in await rig.commands()]
    assert sorted(sent[:2]) == sorted([
        (CommandType.DISCONNECT, None, CommandStatus.ACKNOWLEDGED),
        (CommandType.SET_POWER_FACTOR, -0.9, CommandStatus.ACKNOWLEDGED),
    ])  # fmt: skip
    assert sent[2:] == [(CommandType.CONNECT, None, CommandStatus.ACKNOWLEDGED)]
    assert [status for _, status in rig.answers()] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_STARTED,
        ResponseType.EVENT_COMPLETED,
    ]
    assert rig.server.invalid == []


async def test_run_applies_the_default_control_when_no_event_is_active(rig: Rig) -> None:
    """``run()`` discovers the programs and, with only a scheduled event, applies the program's
    DefaultDERControl (75 % -> 6 kW) with no expiry."""
    now = int(time.time())
    later = der_control("C" * 32, limit(10), now + 3600, 600, created=now)
    rig.server.programs.append(Program("base", primacy=2, controls=[later], default=limit(75)))
    link = rig.link()
    task = asyncio.create_task(link.run())
    try:
        await until_async(lambda: _has_commands(rig))
    finally:
        await cancel_and_wait(task)
        await link.aclose()
    (applied,) = await rig.commands()
    assert applied.status is CommandStatus.ACKNOWLEDGED, applied.message
    assert (applied.request.value, applied.request.expires_at) == (6.0, None)
    assert rig.answers() == [("C" * 32, ResponseType.EVENT_RECEIVED)]
    assert rig.server.invalid == []


async def _has_commands(rig: Rig) -> bool:
    return bool(await rig.commands())


async def test_reports_der_resources_and_mirrored_readings(rig: Rig) -> None:
    """The client PUTs DERCapability (8 kW rating), DERSettings and DERStatus to the DER's links
    and POSTs a MirrorUsagePoint with the inverter's power, then MirrorMeterReadings to it;
    the server finds each body valid; the unmapped EndDevice gets nothing."""
    fleet = rig.services.fleet_access()
    await until_async(lambda: _has_power(rig))
    link = rig.link(post_interval_s=0.001)
    try:
        await link.poll_once()
        await asyncio.sleep(0.01)
        await link.poll_once()
    finally:
        await link.aclose()
    assert rig.server.invalid == []
    site = "/edev/1/der/1"
    capability = PlainDERCapability.from_xml(rig.server.bodies(f"{site}/dercap")[0])
    assert capability.rtgMaxW.value * 10**capability.rtgMaxW.multiplier == 8000
    settings = DERSettings.from_xml(rig.server.bodies(f"{site}/derg")[0])
    assert settings.setMaxW.value * 10**settings.setMaxW.multiplier == 8000
    status = DERStatus.from_xml(rig.server.bodies(f"{site}/ders")[0])
    assert status.genConnectStatus is not None
    assert int(status.genConnectStatus.value, 16) & 0x1
    (mirror_body,) = rig.server.bodies("/mup")
    mirror = MirrorUsagePointRequest.from_xml(mirror_body)
    assert mirror.deviceLFDI == rig.lfdi
    power = next(m for m in mirror.mirrorMeterReadings or [] if m.description == "power_kw")
    latest = (await fleet.latest(["pv"]))["pv"]
    assert power.reading is not None
    assert power.reading.value is not None
    assert power.reading.value / 100 == pytest.approx(
        float(str(latest["power_kw"])) * 1000, rel=0.2
    )
    followups = [MirrorMeterReadingRequest.from_xml(b) for b in rig.server.bodies("/mup/1")]
    assert "power_kw" in {m.description for m in followups}
    assert rig.server.bodies("/edev/0/der/1/ders") == []


async def _has_power(rig: Rig) -> bool:
    latest = await rig.services.fleet_access().latest(["pv"])
    return latest.get("pv", {}).get("power_kw") is not None


async def test_a_client_without_a_trusted_certificate_is_refused(rig: Rig, tmp_path: Path) -> None:
    """A certificate from another CA fails the TLS handshake (TransportError); nothing is
    served or sent; a plain-http server URL is refused by the settings."""
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    rogue_pki = make_pki(rogue)
    cert, key = client_certificate(rogue, rogue_pki.ca, rogue / "ca.key", "intruder")
    rig.server.programs.append(Program("curtail", primacy=1, default=limit(10)))
    link = rig.link(client_cert=cert, client_key=key)
    try:
        with pytest.raises(TransportError):
            await link.poll_once()
    finally:
        await link.aclose()
    assert rig.server.peers == set()
    assert await rig.commands() == []
    with pytest.raises(ValidationError, match="https"):
        rig.config(server_url=f"http://127.0.0.1:{rig.server.port}")
