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
    ActivePower,
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

from async_helpers import until, until_async
from derim.config import load_settings
from derim.errors import TransportError
from derim.grid.fleet import FleetAccess
from derim.grid.sep2.client import Sep2Link
from derim.grid.sep2.config import EndDeviceMapping, Sep2Config, lfdi_of_pem
from derim.grid.sep2.reports import PlainDERCapability
from derim.models.command import (
    FINAL_STATUSES,
    CommandRequest,
    CommandResult,
    CommandStatus,
    CommandType,
)
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

    def link(
        self,
        clock: Callable[[], float] = time.time,
        fleet: FleetAccess | None = None,
        **changes: object,
    ) -> Sep2Link:
        fleet = fleet or self.services.fleet_access()
        return Sep2Link(self.config(**changes), fleet, clock=clock)

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
        await until_async(lambda: _has_final_command(rig))
        await until(lambda: bool(rig.answers()))
    finally:
        await cancel_and_wait(task)
        await link.aclose()
    (applied,) = await rig.commands()
    assert applied.status is CommandStatus.ACKNOWLEDGED, applied.message
    assert (applied.request.value, applied.request.expires_at) == (6.0, None)
    assert rig.answers() == [("C" * 32, ResponseType.EVENT_RECEIVED)]
    assert rig.server.invalid == []


async def _has_final_command(rig: Rig) -> bool:
    return any(record.status in FINAL_STATUSES for record in await rig.commands())


async def test_reports_der_resources_and_mirrored_readings(rig: Rig) -> None:
    """The client PUTs DERCapability (8 kW rating), DERSettings and DERStatus to the DER's links
    and POSTs a MirrorUsagePoint with the inverter's power, then MirrorMeterReadings to it;
    the server finds each body valid; the unmapped EndDevice gets nothing."""
    fleet = rig.services.fleet_access()
    await until_async(lambda: _has_power(rig))
    moment = time.time()
    link = rig.link(clock=lambda: moment, post_interval_s=60)
    try:
        await link.poll_once()
        moment += 60
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


async def test_an_event_a_device_cannot_carry_out_is_rejected(rig: Rig) -> None:
    """An opModTargetW of 20 kW for the 8 kW inverter is refused by the control layer: the event
    is answered 252 (rejected, control parameter not applicable), never "event started", while
    its 50 % limit, which the inverter took, stays applied."""
    now = int(time.time())
    base = DERControlBase(opModMaxLimW=5000, opModTargetW=ActivePower(value=20000, multiplier=0))
    event = der_control("E" * 32, base, now - 10, 600, created=now - 20, status=1)
    rig.server.programs.append(Program("export", primacy=1, controls=[event]))
    link = rig.link()
    try:
        await link.poll_once()
        await link.poll_once()
    finally:
        await link.aclose()
    (limited,) = await rig.commands()
    assert limited.request.command is CommandType.SET_POWER_LIMIT
    assert limited.status is CommandStatus.ACKNOWLEDGED, limited.message
    assert rig.answers() == [
        ("E" * 32, ResponseType.EVENT_RECEIVED),
        ("E" * 32, ResponseType.REJECTED_CONTROL_PARAM_NOT_APPLICABLE),
    ]
    assert rig.server.invalid == []


async def test_a_command_still_under_way_is_not_sent_again(rig: Rig) -> None:
    """A command the control layer reports ``sent`` (the device has not answered yet) is held:
    the next poll does not send it again, and the event counts as started."""
    now = int(time.time())
    event = der_control("F" * 32, limit(50), now - 10, 600, created=now - 20, status=1)
    rig.server.programs.append(Program("curtail", primacy=1, controls=[event]))
    real = rig.services.fleet_access()
    asked: list[CommandRequest] = []

    async def slow_device(device_id: str, request: CommandRequest) -> CommandResult:
        asked.append(request)
        return CommandResult(device_id=device_id, request=request, status=CommandStatus.SENT)

    link = rig.link(fleet=FleetAccess(slow_device, real.devices, real.latest))
    try:
        await link.poll_once()
        await link.poll_once()
    finally:
        await link.aclose()
    assert [(r.command, r.value) for r in asked] == [(CommandType.SET_POWER_LIMIT, 4.0)]
    assert [status for _, status in rig.answers()] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_STARTED,
    ]


async def test_a_command_the_device_fails_after_it_was_sent_is_sent_again(rig: Rig) -> None:
    """A command reported ``sent`` whose record the control layer later completes as failed
    (the device answered after the control layer's wait) is sent again at the next poll; when
    that one fails at once too, the event, answered "event started" before, is answered 252."""
    now = int(time.time())
    event = der_control("A" * 32, limit(50), now - 10, 600, created=now - 20, status=1)
    rig.server.programs.append(Program("curtail", primacy=1, controls=[event]))
    real = rig.services.fleet_access()
    records: list[CommandResult] = []

    async def flaky_device(device_id: str, request: CommandRequest) -> CommandResult:
        status = CommandStatus.SENT if not records else CommandStatus.FAILED
        records.append(CommandResult(device_id=device_id, request=request, status=status))
        return records[-1]

    link = rig.link(fleet=FleetAccess(flaky_device, real.devices, real.latest))
    try:
        await link.poll_once()
        await link.poll_once()
        assert len(records) == 1  # still under way: held, not sent again
        records[0].status = CommandStatus.FAILED  # as the control layer completes it later
        await link.poll_once()
    finally:
        await link.aclose()
    assert [(r.request.command, r.request.value) for r in records] == [
        (CommandType.SET_POWER_LIMIT, 4.0), (CommandType.SET_POWER_LIMIT, 4.0)
    ]  # fmt: skip
    assert [status for _, status in rig.answers()] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_STARTED,
        ResponseType.REJECTED_CONTROL_PARAM_NOT_APPLICABLE,
    ]


async def test_a_superseded_event_stays_ended_when_the_newer_one_ends(rig: Rig) -> None:
    """A newer same-primacy event supersedes an older overlapping one for good: when the newer
    one is over the older one is not applied again (the limit is cleared) and it is never
    answered "event started" a second time."""
    now = int(time.time())
    older = der_control("A" * 32, limit(50), now - 10, 600, created=now - 20, status=1)
    newer = der_control("B" * 32, limit(25), now - 5, 60, created=now - 5, status=1)
    rig.server.programs.append(Program("curtail", primacy=1, controls=[older, newer]))
    offset = 0.0
    link = rig.link(clock=lambda: time.time() + offset)
    try:
        await link.poll_once()
        offset = 120.0
        await link.poll_once()
    finally:
        await link.aclose()
    sent = [(r.request.command, r.request.value) for r in await rig.commands()]
    assert sent == [(CommandType.SET_POWER_LIMIT, 2.0), (CommandType.CLEAR_POWER_LIMIT, None)]
    assert [status for mrid, status in rig.answers() if mrid == "A" * 32] == [
        ResponseType.EVENT_RECEIVED,
        ResponseType.EVENT_SUPERSEDED,
    ]


async def test_an_end_device_listed_by_sfdi_alone_is_the_clients_own(rig: Rig) -> None:
    """A server that lists EndDevices by sFDI only: the one with the client's SFDI is the
    client's own site (its events are carried out and answered with the client's LFDI); the
    other site is left alone."""
    rig.server.lfdi_listed = False
    now = int(time.time())
    event = der_control("D" * 32, limit(50), now - 10, 600, created=now - 20, status=1)
    rig.server.programs.append(Program("curtail", primacy=1, controls=[event]))
    link = rig.link()
    try:
        await link.poll_once()
    finally:
        await link.aclose()
    (applied,) = await rig.commands()
    assert (applied.request.value, applied.status) == (4.0, CommandStatus.ACKNOWLEDGED)
    assert {ControlAnswer.from_xml(b).endDeviceLFDI for b in rig.server.bodies("/rsps/1/rsp")} == {
        rig.lfdi
    }
    assert rig.server.bodies("/edev/0/der/1/ders") == []
    assert rig.server.invalid == []


async def test_state_tells_what_the_link_is_doing(rig: Rig) -> None:
    """``state`` says "discovering" before the first poll, how many programs it follows after
    one, and that the server is unreachable once it stops answering."""
    rig.server.programs.append(Program("curtail", primacy=1, default=limit(80)))
    rig.server.programs.append(Program("market", primacy=2))
    link = rig.link()
    try:
        assert link.state == "discovering"
        await link.poll_once()
        assert link.state == "following 2 programs for 1 EndDevice"
        await rig.server.stop()
        with pytest.raises(TransportError):
            await link.poll_once()
    finally:
        await link.aclose()
    assert link.state.startswith("server unreachable: sep2 GET /dcap")
