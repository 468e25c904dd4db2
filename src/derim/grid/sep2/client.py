"""The IEEE 2030.5 client link (the aggregator of CSIP): polls a utility server's DER programs,
applies the controls in force to the mapped DERIM devices through the control layer (source
``sep2``, ``expires_at`` = the event's end), answers events with Responses, and reports each
site's DERCapability, DERSettings, DERStatus and mirrored readings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from envoy_schema.server.schema.sep2.der import DERControlResponse, DERListResponse
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.end_device import EndDeviceResponse
from envoy_schema.server.schema.sep2.response import DERControlResponse as ControlAnswer
from envoy_schema.server.schema.sep2.response import ResponseType

from derim.errors import DerimError, ProtocolError
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
from derim.models.command import CommandRequest
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
RECEIPT = 0x01
"""responseRequired bit: answer "event received"."""
SPECIFIC = 0x02
"""responseRequired bit: answer each change of the event's state (started, completed, ...)."""

Held = tuple[Setpoint, int | None]


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
        self._http = Sep2Http(config, transport)
        self._held: dict[str, dict[Channel, Held]] = {}
        self._answered: dict[tuple[str, str], set[ResponseType]] = {}
        self._mirrors: dict[str, str] = {}
        self._next_report = 0.0
        self._next_change: int | None = None

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and retried with capped backoff."""
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
        longer (doubling, capped) after failures."""
        interval = self._config.poll_interval_s
        if failures:
            return min(interval * 2.0 ** (failures - 1), MAX_BACKOFF_S)
        if self._next_change is not None:
            interval = min(interval, float(self._next_change - self._clock()))
        return max(interval, MIN_WAIT_S)

    async def poll_once(self) -> None:
        """Read the server once, apply the controls in force, answer, report when due."""
        moment = self._clock()
        now = int(moment)
        dcap, sites = await discover(self._http, self._config.dcap_path, self._is_ours)
        changes = []
        for site in sites:
            resolution = await self._apply(site, now)
            if resolution.next_change is not None:
                changes.append(resolution.next_change)
        self._next_change = min(changes, default=None)
        if moment >= self._next_report:
            await self._report(dcap, sites, now)
            self._next_report = moment + self._config.post_interval_s

    async def aclose(self) -> None:
        """Close the connection to the server."""
        await self._http.aclose()

    def _is_ours(self, end_device: EndDeviceResponse) -> bool:
        return self._config.mapping_for(end_device.lFDI, self.lfdi) is not None

    def _mapping(self, site: Site) -> EndDeviceMapping:
        mapping = self._config.mapping_for(site.end_device.lFDI, self.lfdi)
        assert mapping is not None, "discover() keeps only mapped EndDevices"
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
        lfdi = site.end_device.lFDI or self.lfdi
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
        resolution = resolve(events, defaults, now, seed=f"{self.lfdi}/{lfdi}")
        devices = self._devices(self._mapping(site))
        plan = commands_for({mode: a.value for mode, a in resolution.modes.items()}, devices)
        for device in devices:
            await self._steer(device.id, plan.get(device.id, {}), resolution)
        await self._answer(lfdi, controls, resolution, now)
        return resolution

    async def _steer(
        self, device_id: str, wanted: dict[Channel, Setpoint], resolution: Resolution
    ) -> None:
        """Send what changed on each channel of one device; release channels no longer set."""
        held = self._held.setdefault(device_id, {})
        for channel, setpoint in wanted.items():
            expires = _expiry(channel, resolution)
            changed = held.get(channel) != (setpoint, expires)
            if changed and await self._submit(device_id, setpoint, expires):
                held[channel] = (setpoint, expires)
        for channel in [c for c in held if c not in wanted]:
            release = RELEASE.get(channel)
            if release is None or await self._submit(device_id, release, None):
                del held[channel]

    async def _submit(self, device_id: str, setpoint: Setpoint, expires: int | None) -> bool:
        """One command through the control layer; whether the device acknowledged it."""
        request = CommandRequest(
            command=setpoint.command,
            value=setpoint.value,
            unit=setpoint.unit,
            source=SOURCE,
            expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
        )
        (outcome,) = await submit_each(self._fleet, [device_id], request)
        if not outcome.acknowledged:
            status = outcome.describe()
            log.info(
                "sep2 %s on %s not acknowledged: %s", setpoint.command.value, device_id, status
            )
        return outcome.acknowledged

    async def _answer(
        self, lfdi: str, controls: dict[str, DERControlResponse], resolution: Resolution, now: int
    ) -> None:
        """Post the Responses each event asks for (responseRequired) that are not yet sent; one
        that cannot be delivered is tried again at the next poll."""
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
            completed = answer is ResponseType.EVENT_COMPLETED
            if (
                required & SPECIFIC
                and answer
                and (not completed or ResponseType.EVENT_STARTED in sent)
            ):
                due.append(answer)
            for status in [s for s in due if s not in sent]:
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
        lfdi = site.end_device.lFDI or self.lfdi
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


def _expiry(channel: Channel, resolution: Resolution) -> int | None:
    """When a channel's setpoint lapses (s): the latest end of the events it comes from, or
    None when a default control (which has no end) is among them."""
    ends = [resolution.modes[m].ends_at for m in CHANNEL_MODES[channel] if m in resolution.modes]
    if not ends or None in ends:
        return None
    return max(end for end in ends if end is not None)
