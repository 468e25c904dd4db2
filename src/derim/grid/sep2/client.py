"""The IEEE 2030.5 client link (the aggregator of CSIP): polls a utility server's DER programs,
applies the controls in force to the mapped DERIM devices through the control layer (source
``sep2``, ``expires_at`` = the event's end), answers events with Responses, and reports each
site's DERCapability, DERSettings, DERStatus and mirrored readings.

An event is answered "event started" only once every command it caused was acknowledged by its
device (or is still under way in the control layer); when a device refused or failed one (also
after the control layer reported it ``sent``), or no mapped device can carry out its modes, it
is answered 252 (IEEE 2030.5-2018 Table 27: "Rejected -
control parameter not applicable", the only rejection that fits a device that cannot comply)
and the link tries the commands again at each poll, answering "event started" once they succeed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from envoy_schema.server.schema.sep2.der import DERControlResponse, DERListResponse
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.end_device import EndDeviceResponse
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlAnswer
from envoy_schema.server.schema.sep2.response import ResponseType

from derim.adapters.base import Backoff
from derim.errors import DerimError, ProtocolError, TransportError
from derim.grid.fleet import FleetAccess, submit_each
from derim.grid.sep2 import reports
from derim.grid.sep2.config import EndDeviceMapping, Sep2Config, sfdi_of
from derim.grid.sep2.controls import (
    CHANNEL_MODES,
    RELEASE,
    Channel,
    Setpoint,
    commands_for,
    default_of,
    event_of,
)
from derim.grid.sep2.events import Phase, Resolution, resolve
from derim.grid.sep2.resources import Sep2Http, Site, discover
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.models.device import DERDevice

log = logging.getLogger(__name__)

SOURCE = "sep2"
MAX_BACKOFF_S = 300.0
MIN_WAIT_S = 0.5
"""Shortest wait between polls, even when an event starts or ends sooner."""

_ANSWERS = {
    Phase.ACTIVE: ResponseType.EVENT_STARTED,
    Phase.COMPLETED: ResponseType.EVENT_COMPLETED,
    Phase.CANCELLED: ResponseType.EVENT_CANCELLED,
    Phase.SUPERSEDED: ResponseType.EVENT_SUPERSEDED,
}
REJECTED = ResponseType.REJECTED_CONTROL_PARAM_NOT_APPLICABLE
"""Table 27 status 252: the event was not (or not wholly) carried out."""
UNDER_WAY = frozenset({CommandStatus.ACKNOWLEDGED, CommandStatus.SENT})
"""Command outcomes taken as carried out: a ``sent`` command is completed by the control layer."""
RECEIPT = 0x01
"""responseRequired bit: answer "event received"."""
SPECIFIC = 0x02
"""responseRequired bit: answer each change of the event's state (started, completed, ...)."""


@dataclass(frozen=True)
class Held:
    """A command a device took on one channel; ``record`` is the control layer's, which it
    completes in place when the device answers after ``submit`` returned ``sent``."""

    setpoint: Setpoint
    expires: int | None
    record: CommandResult

    def holds(self, setpoint: Setpoint, expires: int | None) -> bool:
        """Whether this is ``setpoint`` until ``expires`` and the device has not failed it."""
        return (self.setpoint, self.expires) == (setpoint, expires) and (
            self.record.status in UNDER_WAY
        )


class Sep2Link:
    """One 2030.5 server, polled; the fleet's devices controlled through ``FleetAccess``."""

    def __init__(
        self,
        config: Sep2Config,
        fleet: FleetAccess,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._fleet = fleet
        self._clock = clock
        self.lfdi = config.lfdi()
        self.sfdi = sfdi_of(self.lfdi)
        self.state = "discovering"
        """What the link is doing, for health: discovering, following programs, or why not."""
        self._http = Sep2Http(config, transport)
        self._backoff = Backoff(initial_s=config.poll_interval_s, max_s=MAX_BACKOFF_S)
        self._held: dict[str, dict[Channel, Held]] = {}
        self._answered: dict[tuple[str, str], set[ResponseType]] = {}
        self._superseded: dict[str, frozenset[str]] = {}
        self._mirrors: dict[str, str] = {}
        self._next_report = 0.0
        self._next_change: int | None = None

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and retried with capped backoff."""
        log.info(
            "sep2 client LFDI %s (SFDI %d) polls %s", self.lfdi, self.sfdi, self._config.base_url
        )
        failures = 0
        while True:
            try:
                await self.poll_once()
                failures = 0
            except DerimError as exc:
                failures += 1
                log.warning("sep2 poll of %s failed (%d): %s", self._config.base_url, failures, exc)
            await asyncio.sleep(self._wait(failures))

    def _wait(self, failures: int) -> float:
        """Seconds to the next poll: the poll interval, sooner when an event starts or ends,
        longer (``Backoff``: doubling, capped, jittered) after failures."""
        if failures:
            return self._backoff.delay(failures)
        interval = self._config.poll_interval_s
        if self._next_change is not None:
            interval = min(interval, float(self._next_change - self._clock()))
        return max(interval, MIN_WAIT_S)

    async def poll_once(self) -> None:
        """Read the server once, apply the controls in force, answer, report when due; ``state``
        says how it went."""
        try:
            await self._poll()
        except TransportError as exc:
            self.state = f"server unreachable: {exc}"
            raise
        except DerimError as exc:
            self.state = f"poll failed: {exc}"
            raise

    async def _poll(self) -> None:
        moment = self._clock()
        now = int(moment)
        dcap, sites = await discover(self._http, self._config.dcap_path, self._is_ours)
        changes = []
        for site in sites:
            resolution = await self._apply(site, now)
            if resolution.next_change is not None:
                changes.append(resolution.next_change)
        self._next_change = min(changes, default=None)
        self.state = _following(sites)
        if moment >= self._next_report:
            await self._report(dcap, sites, now)
            self._next_report = moment + self._config.post_interval_s

    async def aclose(self) -> None:
        """Close the connection to the server."""
        await self._http.aclose()

    def _lfdi_of(self, end_device: EndDeviceResponse) -> str | None:
        """The EndDevice's LFDI; a server that gives only the sFDI names the client's own
        EndDevice when it is the client's SFDI."""
        if end_device.lFDI is not None:
            return end_device.lFDI
        return self.lfdi if end_device.sFDI == self.sfdi else None

    def _is_ours(self, end_device: EndDeviceResponse) -> bool:
        return self._config.mapping_for(self._lfdi_of(end_device), self.lfdi) is not None

    def _mapping(self, site: Site) -> EndDeviceMapping:
        mapping = self._config.mapping_for(self._lfdi_of(site.end_device), self.lfdi)
        if mapping is None:
            raise ProtocolError(f"sep2 EndDevice {site.end_device.href} is not mapped")
        return mapping

    def _devices(self, mapping: EndDeviceMapping) -> list[DERDevice]:
        """The registered devices a mapping names, each once; unknown ids are logged."""
        found: dict[str, DERDevice] = {}
        for device_id in mapping.device_ids:
            device = self._fleet.device(device_id)
            if device is None:
                log.warning("sep2 mapping names unknown device %r", device_id)
            else:
                found[device.id] = device
        if mapping.group is not None:
            found |= {device.id: device for device in self._fleet.members(mapping.group)}
        return list(found.values())

    async def _apply(self, site: Site, now: int) -> Resolution:
        """Carry out the site's controls in force and answer its events."""
        lfdi = self._lfdi_of(site.end_device) or self.lfdi
        controls: dict[str, DERControlResponse] = {}
        events = []
        for program in site.programs:
            for control in program.controls:
                try:
                    event = event_of(control, program.program.primacy)
                except ProtocolError as exc:
                    log.warning("sep2 control ignored: %s", exc)
                    continue
                controls[event.mrid] = control
                events.append(event)
        defaults = [
            default_of(program.default, program.program.primacy)
            for program in site.programs
            if program.default is not None
        ]
        resolution = resolve(
            events,
            defaults,
            now,
            seed=f"{self.lfdi}/{lfdi}",
            superseded=self._superseded.get(lfdi, frozenset()),
        )
        self._superseded[lfdi] = resolution.superseded
        devices = self._devices(self._mapping(site))
        plan = commands_for({mode: a.value for mode, a in resolution.modes.items()}, devices)
        carried: set[str] = set()
        failed: set[str] = set()
        for device in devices:
            wanted = plan.get(device.id, {})
            missed = await self._steer(device.id, wanted, resolution)
            for channel in wanted:
                sources = _sources(channel, resolution)
                carried |= sources
                if channel in missed:
                    failed |= sources
        await self._answer(lfdi, controls, resolution, now, carried - failed)
        return resolution

    async def _steer(
        self, device_id: str, wanted: dict[Channel, Setpoint], resolution: Resolution
    ) -> set[Channel]:
        """Send what changed on each channel of one device, and again what the device failed
        after it was sent; release channels no longer set. The wanted channels the device did
        not take (tried again at the next poll)."""
        held = self._held.setdefault(device_id, {})
        missed: set[Channel] = set()
        for channel, setpoint in wanted.items():
            expires = _expiry(channel, resolution)
            holding = held.get(channel)
            if holding is not None and holding.holds(setpoint, expires):
                continue
            record = await self._submit(device_id, setpoint, expires)
            if record is not None:
                held[channel] = Held(setpoint, expires, record)
            else:
                missed.add(channel)
        for channel in [c for c in held if c not in wanted]:
            release = RELEASE.get(channel)
            if release is None or await self._submit(device_id, release, None) is not None:
                del held[channel]
        return missed

    async def _submit(
        self, device_id: str, setpoint: Setpoint, expires: int | None
    ) -> CommandResult | None:
        """One command through the control layer; its record if the device acknowledged it or
        the control layer still has it under way (``sent``: it completes the record itself)."""
        request = CommandRequest(
            command=setpoint.command,
            value=setpoint.value,
            unit=setpoint.unit,
            source=SOURCE,
            expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
        )
        (outcome,) = await submit_each(self._fleet, [device_id], request)
        if outcome.result is not None and outcome.result.status in UNDER_WAY:
            return outcome.result
        status = outcome.describe()
        log.info("sep2 %s on %s not carried out: %s", setpoint.command.value, device_id, status)
        return None

    async def _answer(
        self,
        lfdi: str,
        controls: dict[str, DERControlResponse],
        resolution: Resolution,
        now: int,
        carried_out: set[str],
    ) -> None:
        """Post the Responses each event asks for (responseRequired) that are not yet sent; one
        that cannot be delivered is tried again at the next poll. An active event not in
        ``carried_out`` is answered ``REJECTED``."""
        for key in [k for k in self._answered if k[0] == lfdi and k[1] not in controls]:
            del self._answered[key]
        for mrid, control in controls.items():
            required = int(control.responseRequired or "0", 16)
            if control.replyTo is None or not required:
                continue
            sent = self._answered.setdefault((lfdi, mrid), set())
            due = []
            if required & RECEIPT:
                due.append(ResponseType.EVENT_RECEIVED)
            answer = _ANSWERS.get(resolution.phases[mrid])
            if answer is ResponseType.EVENT_STARTED and mrid not in carried_out:
                answer = REJECTED
            completed = answer is ResponseType.EVENT_COMPLETED
            if (
                required & SPECIFIC
                and answer
                and (not completed or ResponseType.EVENT_STARTED in sent)
            ):
                due.append(answer)
            for status in [s for s in due if s not in sent]:
                if status is REJECTED:
                    log.warning(
                        "sep2 event %s rejected (252): not carried out on every device", mrid
                    )
                body = ControlAnswer(
                    createdDateTime=now, endDeviceLFDI=lfdi, status=status, subject=mrid
                )
                try:
                    await self._http.send("POST", control.replyTo, body)
                except DerimError as exc:
                    log.warning("sep2 response to %s not delivered (retried): %s", mrid, exc)
                    break
                sent.add(status)

    async def _report(self, dcap: DeviceCapabilityResponse, sites: list[Site], now: int) -> None:
        """Each site's DER resources and mirrored readings; one site's failure is logged."""
        for site in sites:
            try:
                await self._report_site(dcap, site, now)
            except DerimError as exc:
                log.warning("sep2 report of %s failed: %s", site.end_device.href, exc)

    async def _report_site(self, dcap: DeviceCapabilityResponse, site: Site, now: int) -> None:
        lfdi = self._lfdi_of(site.end_device) or self.lfdi
        mapping = self._mapping(site)
        devices = self._devices(mapping)
        readings = await self._fleet.latest([d.id for d in devices])
        link = site.end_device.DERListLink
        if link is not None:
            ders = (await self._http.get(link.href, DERListResponse)).DER_ or []
            for der in ders[:1]:
                if der.DERCapabilityLink is not None:
                    body = reports.capability(devices)
                    await self._http.send("PUT", der.DERCapabilityLink.href, body)
                if der.DERSettingsLink is not None:
                    body_settings = reports.settings(devices, now)
                    await self._http.send("PUT", der.DERSettingsLink.href, body_settings)
                if der.DERStatusLink is not None:
                    await self._http.send(
                        "PUT", der.DERStatusLink.href, reports.status(readings, now)
                    )
        mirror_list = dcap.MirrorUsagePointListLink
        if mirror_list is None or not mapping.reading_device_ids:
            return
        mirrored = reports.meter_readings(
            lfdi, await self._fleet.latest(mapping.reading_device_ids), now
        )
        if lfdi not in self._mirrors:
            location = await self._http.send(
                "POST", mirror_list.href, reports.usage_point(lfdi, mirrored)
            )
            self._mirrors[lfdi] = location or mirror_list.href
            return
        for reading in mirrored:
            await self._http.send("POST", self._mirrors[lfdi], reading)


def _following(sites: list[Site]) -> str:
    """The link's state after a good poll: how many programs it follows, for how many sites."""
    if not sites:
        return "no mapped EndDevice on the server"
    programs = sum(len(site.programs) for site in sites)
    return f"following {_count(programs, 'program')} for {_count(len(sites), 'EndDevice')}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _sources(channel: Channel, resolution: Resolution) -> set[str]:
    """The events (and defaults) whose modes a channel's setpoint is made from (mRIDs)."""
    return {resolution.modes[m].mrid for m in CHANNEL_MODES[channel] if m in resolution.modes}


def _expiry(channel: Channel, resolution: Resolution) -> int | None:
    """When a channel's setpoint lapses (s): the latest end of the events it comes from, or
    None when a default control (which has no end) is among them."""
    ends = [resolution.modes[m].ends_at for m in CHANNEL_MODES[channel] if m in resolution.modes]
    if not ends or None in ends:
        return None
    return max(end for end in ends if end is not None)
