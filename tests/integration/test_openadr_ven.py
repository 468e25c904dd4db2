"""The OpenADR VEN against a real openleadr VTN on loopback, carrying events on a simulated
SunSpec PV inverter (Modbus TCP) through DERIM's core: opt-in and opt-out, limits applied at
the interval's start and released at its end, on cancellation or when the VTN stops listing the
event, reports, retrying until the VTN appears, registering again with a VTN that forgot the
VEN, the link's state, and mutual TLS with signed messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from certificates import make_certificates
from influxd import free_ports
from openleadr import OpenADRServer
from openleadr.service import VTNService
from openleadr.utils import certificate_fingerprint, getmember

from async_helpers import until, until_async
from derim.config import load_settings
from derim.grid.fleet import FleetAccess
from derim.grid.openadr.config import OpenAdrConfig, Programme
from derim.grid.openadr.ven import OpenAdrVen, SignalRule
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, ModbusConnection
from derim.services import Services, running_services
from derim.sim.sunspec_fleet import METER_UNIT, PV_UNIT, SunSpecFleetSim
from derim.tasks import cancel_and_wait

VEN_ID = "ven-derim"
DR = "oadr://derim.test/dr"
METERING = "oadr://derim.test/metering"
SUNNY = datetime(2024, 6, 30, 17, 0, tzinfo=UTC)
"""Local noon at the simulator's weather station: the inverter produces most of its rating."""
PV_RATING_KW = 8.0
CAPACITY = SignalRule(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
                      kind="fraction")  # fmt: skip
CAPACITY_SIGNAL = ("LOAD_CONTROL", "x-loadControlCapacity")


class Vtn:
    """An openleadr VTN that registers one VEN, pushes events and keeps what comes back."""

    def __init__(self, port: int, scheme: str = "http", **options: Any) -> None:
        self.port = port
        self.scheme = scheme
        self.server = OpenADRServer(
            vtn_id="DERIM-TEST-VTN",
            http_port=port,
            requested_poll_freq=timedelta(seconds=1),
            show_fingerprint=False,
            **options,
        )
        self.server.add_handler("on_create_party_registration", self.on_create_party_registration)
        self.server.add_handler("on_register_report", self.on_register_report)
        self.opts: dict[str, str] = {}
        self.reports: list[tuple[str, float]] = []
        self.registrations = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"

    async def on_create_party_registration(self, info: dict[str, Any]) -> tuple[str, str]:
        self.registrations += 1
        return VEN_ID, "reg-1"

    def lookup(self, ven_id: str) -> dict[str, str] | None:
        """The VENs registered with this VTN (a restarted VTN knows none)."""
        if self.registrations == 0:
            return None
        return {"ven_id": ven_id, "registration_id": "reg-1"}

    async def on_register_report(
        self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
        min_sampling_interval: timedelta, max_sampling_interval: timedelta,
    ) -> tuple[Any, timedelta]:  # fmt: skip
        """Ask for every offered value once a second."""
        return partial(self.on_values, resource_id), min_sampling_interval

    async def on_values(self, resource_id: str, values: list[tuple[datetime, float]]) -> None:
        self.reports.extend((resource_id, value) for _, value in values)

    async def on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts[event_id] = opt_type

    def push(
        self, payloads: Sequence[float], *, start_in_s: float, step_s: float,
        market_context: str = DR, resource_id: str = "dr",
        signal: tuple[str, str] = ("SIMPLE", "level"),
    ) -> str:  # fmt: skip
        """An event of one interval per payload (SIMPLE levels by default); its event id."""
        start = datetime.now(UTC) + timedelta(seconds=start_in_s)
        intervals = [
            {"dtstart": start + i * timedelta(seconds=step_s),
             "duration": timedelta(seconds=step_s), "signal_payload": payload}
            for i, payload in enumerate(payloads)
        ]  # fmt: skip
        event_id: str = self.server.add_event(
            ven_id=VEN_ID, signal_name=signal[0], signal_type=signal[1], intervals=intervals,
            callback=self.on_opt, market_context=market_context,
            targets=[{"resource_id": resource_id}],
        )  # fmt: skip
        return event_id

    def forget(self, event_id: str) -> None:
        """Drop an event from the VEN's list without cancelling it: the VEN's next poll gets
        an oadrDistributeEvent of the other events."""
        events = self.server.events[VEN_ID]
        events[:] = [e for e in events if getmember(e, "event_descriptor.event_id") != event_id]
        self.server.events_updated[VEN_ID] = True


@dataclass
class Site:
    sim: SunSpecFleetSim
    services: Services
    vtn: Vtn
    ven: OpenAdrVen

    def limit_enabled(self) -> bool:
        """Whether the inverter holds an enabled model 704 power limit."""
        return bool(self.sim.pv.values[704]["WMaxLimPctEna"] == 1)

    def limit_percent(self) -> float:
        controls = self.sim.pv.values[704]
        return float(controls["WMaxLimPct"] * 10.0 ** controls["WMaxLimPct_SF"])

    async def commands(self, command: CommandType) -> list[CommandResult]:
        """The inverter's ``openadr`` commands of one kind that were carried out."""
        records = await self.services.controller.store.for_device("pv-1")
        return [
            r for r in records
            if r.request.source == "openadr" and r.request.command is command
            and not r.request.dry_run
        ]  # fmt: skip


def fleet_devices(port: int) -> list[DERDevice]:
    """The simulator's inverter (group ``dr``) and its site meter (group ``metering``)."""

    def on_gateway(unit_id: int, **extra: Any) -> ModbusConnection:
        return ModbusConnection(
            protocol="sunspec", host="127.0.0.1", port=port, unit_id=unit_id,
            poll_interval_s=0.2, timeout_s=1.0, **extra,
        )  # fmt: skip

    meter = on_gateway(METER_UNIT, profile="generic_meter").model_copy(
        update={"protocol": "modbus"}
    )
    return [
        DERDevice(id="pv-1", device_type=DeviceType.SOLAR_PV, rated_power_kw=PV_RATING_KW,
                  groups=["dr"], connection=on_gateway(PV_UNIT)),
        DERDevice(id="meter-1", device_type=DeviceType.METER, groups=["metering"],
                  connection=meter),
    ]  # fmt: skip


def ven_config(vtn_url: str) -> OpenAdrConfig:
    return OpenAdrConfig(
        vtn_url=vtn_url,
        ven_name="derim-test",
        report_interval_s=1,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        programmes=[
            Programme(group="dr", market_context=DR, signals=[SignalRule(), CAPACITY]),
            Programme(group="metering", market_context=METERING),
        ],
    )


@contextlib.asynccontextmanager
async def following(ven: OpenAdrVen) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ven.run())
    try:
        yield task
    finally:
        await cancel_and_wait(task)
        await ven.aclose()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """The core polling the simulated site, an openleadr VTN and a registered VEN."""
    sim = await SunSpecFleetSim(
        pv_rating_w=round(PV_RATING_KW * 1000), step_s=0.1, clock=lambda: SUNNY
    ).start()
    (port,) = free_ports(1)
    vtn = Vtn(port)
    await vtn.server.run()
    settings = load_settings(data_dir=tmp_path, devices=fleet_devices(sim.port), control_wait_s=5)
    try:
        async with running_services(settings) as services:
            ven = OpenAdrVen(ven_config(vtn.url), services.fleet_access())
            async with following(ven):
                await until(lambda: ven.client is not None and ven.client.ven_id == VEN_ID)
                yield Site(sim, services, vtn, ven)
    finally:
        await vtn.server.stop()
        await sim.stop()


async def test_an_event_limits_the_group_from_its_start_and_lapses_at_its_end(
    site: Site,
) -> None:
    """A SIMPLE level 2 event is opted into, sets 40 % on the inverter (a command with source
    openadr, acknowledged) not before its start, and the limit is gone after the event ends."""
    step = timedelta(seconds=3)
    event_id = site.vtn.push([2], start_in_s=1.5, step_s=step.total_seconds())
    await until(lambda: event_id in site.vtn.opts)
    assert site.vtn.opts[event_id] == "optIn"
    await until(site.limit_enabled)
    assert site.limit_percent() == pytest.approx(40)
    (record,) = await site.commands(CommandType.SET_POWER_LIMIT)
    assert record.status is CommandStatus.ACKNOWLEDGED
    assert (record.request.value, record.request.unit) == (40, "%")
    assert record.request.expires_at is not None
    requested_at = record.history[0][1]
    assert requested_at >= record.request.expires_at - step  # not before the event's start
    await until(lambda: not site.limit_enabled())
    assert await site.commands(CommandType.CLEAR_POWER_LIMIT) == []


async def test_a_cancelled_event_is_released_at_once(site: Site) -> None:
    """Cancelling an active event clears the limit with an acknowledged clear_power_limit
    from source openadr, long before the event would have ended."""
    event_id = site.vtn.push([3, 1], start_in_s=0, step_s=60)
    await until(lambda: site.vtn.opts.get(event_id) == "optIn")
    await until(site.limit_enabled)
    assert site.limit_percent() == pytest.approx(0)
    site.vtn.server.cancel_event(VEN_ID, event_id)
    await until(lambda: not site.limit_enabled())

    async def cleared() -> bool:
        records = await site.commands(CommandType.CLEAR_POWER_LIMIT)
        return any(r.status is CommandStatus.ACKNOWLEDGED for r in records)

    await until_async(cleared)


async def test_an_event_the_vtn_stops_listing_is_released(site: Site) -> None:
    """An event missing from a later oadrDistributeEvent counts as cancelled (OpenADR 2.0b):
    its 0 % limit is lifted and the event still listed holds the inverter at its 70 %."""
    dropped = site.vtn.push([3], start_in_s=0, step_s=60)
    kept = site.vtn.push([1], start_in_s=0, step_s=60)
    await until(lambda: site.vtn.opts.get(dropped) == site.vtn.opts.get(kept) == "optIn")
    await until(lambda: site.limit_enabled() and site.limit_percent() == 0)
    site.vtn.forget(dropped)
    await until(lambda: site.limit_enabled() and site.limit_percent() == pytest.approx(70))
    (latest, *_) = sorted(
        await site.commands(CommandType.SET_POWER_LIMIT), key=lambda r: r.history[0][1],
        reverse=True,
    )  # fmt: skip
    assert (latest.request.value, latest.status) == (70, CommandStatus.ACKNOWLEDGED)


async def test_events_no_group_can_carry_are_opted_out(site: Site) -> None:
    """An event for the meter's group (nothing controllable), one for an unknown market
    context and one asking for 170 % of capacity are opted out of; nothing is sent."""
    for_meter = site.vtn.push([2], start_in_s=0, step_s=30, market_context=METERING,
                              resource_id="metering")  # fmt: skip
    unknown = site.vtn.push([2], start_in_s=0, step_s=30, market_context="oadr://other")
    malformed = site.vtn.push([1.7], start_in_s=0, step_s=30, signal=CAPACITY_SIGNAL)
    await until(lambda: len(site.vtn.opts) == 3)
    assert site.vtn.opts == {for_meter: "optOut", unknown: "optOut", malformed: "optOut"}
    assert site.ven.dispatcher.desired(datetime.now(UTC) + timedelta(seconds=10)) == {}
    assert await site.commands(CommandType.SET_POWER_LIMIT) == []


async def test_the_vtn_receives_the_group_power(site: Site) -> None:
    """The VTN asked for the offered report and receives the inverter's power, kW."""
    await until(lambda: any(resource == "dr" for resource, _ in site.vtn.reports))
    latest = await site.services.store.latest(["pv-1"])
    produced = latest["pv-1"]["power_kw"]
    assert isinstance(produced, float)
    assert produced > 1
    values = [value for resource, value in site.vtn.reports if resource == "dr"]
    assert values[-1] == pytest.approx(produced, rel=0.2)


async def test_the_ven_retries_until_the_vtn_appears(caplog: pytest.LogCaptureFixture) -> None:
    """With no VTN listening the link warns once about each weak security setting (plain
    http, no VTN fingerprint), says the VTN is unreachable (log once, state), keeps trying,
    and registers as soon as the VTN starts."""
    (port,) = free_ports(1)
    vtn = Vtn(port)
    fleet = FleetAccess(submit=_no_commands, devices=list, latest=_no_readings)
    ven = OpenAdrVen(ven_config(vtn.url), fleet)
    with caplog.at_level(logging.DEBUG, logger="derim.grid.openadr"):
        async with following(ven) as task:
            await until(lambda: sum("still not available" in m for m in caplog.messages) >= 3)
            assert not task.done()
            assert ven.state == "vtn unreachable"
            await vtn.server.run()
            try:
                await until(lambda: ven.state == "registered")
                assert ven.ven_id == VEN_ID
            finally:
                await vtn.server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("derim.grid.openadr")]  # fmt: skip
    assert [m.split(" towards ")[0] for m in warnings[:2]] == 2 * ["openadr: weak security"]
    assert ["plain http" in warnings[0], "no vtn_fingerprint" in warnings[1]] == [True, True]
    assert len(warnings) == 3
    assert "not available" in warnings[2]


async def test_mutual_tls_with_signed_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTPS with a client certificate, every message signed and each side checking the
    other's fingerprint, the VEN registers (no weak-security warning), opts into an event and
    reports."""
    vtn_ca, vtn_cert, vtn_key = make_certificates(_folder(tmp_path / "vtn"))
    ven_ca, ven_cert, ven_key = make_certificates(_folder(tmp_path / "ven"))
    ven_fingerprint = certificate_fingerprint(ven_cert.read_bytes())
    known: dict[str, dict[str, str]] = {}
    # openleadr keeps the lookup on the VTNService class: undone after the test.
    monkeypatch.setattr(VTNService, "ven_lookup", None, raising=False)

    def lookup(ven_id: str) -> dict[str, str] | None:
        return known.get(ven_id)

    (port,) = free_ports(1)
    vtn = Vtn(
        port, "https", cert=str(vtn_cert), key=str(vtn_key), http_cert=str(vtn_cert),
        http_key=str(vtn_key), http_ca_file=str(ven_ca), ven_lookup=lookup,
    )  # fmt: skip

    async def register(info: dict[str, Any]) -> tuple[str, str] | bool:
        if info.get("fingerprint") != ven_fingerprint:
            return False
        known[VEN_ID] = {"ven_id": VEN_ID, "registration_id": "reg-1",
                         "fingerprint": ven_fingerprint}  # fmt: skip
        return VEN_ID, "reg-1"

    vtn.server.add_handler("on_create_party_registration", register)
    config = ven_config(vtn.url).model_copy(update={
        "cert_path": ven_cert, "key_path": ven_key, "ca_path": vtn_ca,
        "vtn_fingerprint": certificate_fingerprint(vtn_cert.read_bytes()),
    })  # fmt: skip
    pv = DERDevice(id="pv-1", device_type=DeviceType.SOLAR_PV, rated_power_kw=5, groups=["dr"])
    now = datetime.now(UTC)
    readings = {"pv-1": {"timestamp": now + timedelta(hours=1), "power_kw": 2.5}}
    fleet = FleetAccess(submit=_accepted, devices=lambda: [pv], latest=partial(_only, readings))
    await vtn.server.run()
    try:
        ven = OpenAdrVen(config, fleet)
        async with following(ven):
            event_id = vtn.push([1], start_in_s=30, step_s=30)
            await until(lambda: vtn.opts.get(event_id) == "optIn")
            await until(lambda: ("dr", 2.5) in vtn.reports)
    finally:
        await vtn.server.stop()
    assert not any("weak security" in m for m in caplog.messages)


async def test_a_vtn_that_forgot_the_ven_has_it_register_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A VTN restarted without its registrations asks the polling VEN to register again; the
    VEN does, and answers the new VTN's events. Its state says ``vtn lost`` while polls go
    unanswered and ``registered`` again after."""
    (port,) = free_ports(1)
    first = Vtn(port)
    # openleadr keeps the lookup on the VTNService class: undone after the test.
    monkeypatch.setattr(VTNService, "ven_lookup", staticmethod(first.lookup), raising=False)
    pv = DERDevice(id="pv-1", device_type=DeviceType.SOLAR_PV, rated_power_kw=5, groups=["dr"])
    fleet = FleetAccess(submit=_accepted, devices=lambda: [pv], latest=_no_readings)
    ven = OpenAdrVen(ven_config(first.url), fleet)
    await first.server.run()
    async with following(ven):
        try:
            await until(lambda: ven.client is not None and ven.client.ven_id == VEN_ID)
        finally:
            await first.server.stop()
        await until(lambda: ven.state == "vtn lost")
        second = Vtn(port, ven_lookup=None)
        monkeypatch.setattr(VTNService, "ven_lookup", staticmethod(second.lookup))
        await second.server.run()
        try:
            await until(lambda: second.registrations == 1)
            event_id = second.push([1], start_in_s=30, step_s=30)
            await until(lambda: second.opts.get(event_id) == "optIn")
            assert ven.state == "registered"
        finally:
            await second.server.stop()


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


async def _accepted(device_id: str, request: CommandRequest) -> CommandResult:
    return CommandResult(device_id=device_id, request=request, status=CommandStatus.VALIDATED)


async def _only(
    readings: dict[str, dict[str, object]], device_ids: Sequence[str]
) -> dict[str, dict[str, object]]:
    return {d: readings[d] for d in device_ids if d in readings}


async def _no_commands(device_id: str, request: Any) -> CommandResult:
    raise AssertionError("no command expected")


async def _no_readings(device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
    return {}
