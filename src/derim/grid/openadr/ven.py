"""The OpenADR 2.0b VEN link, on openleadr's ``OpenADRClient`` (simple HTTP, pull model).

It registers with the VTN (retrying with capped backoff while the VTN cannot be reached),
offers a TELEMETRY_USAGE report of each programme group's active power, answers each event
with optIn or optOut and hands the accepted events' steps to a ``LimitDispatcher``, which
sends the limits through the control layer (source ``openadr``). An event the VTN stops
distributing without cancelling it counts as cancelled (OpenADR 2.0b).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from openleadr import OpenADRClient, objects

from derim.adapters.base import Backoff
from derim.errors import ConfigError, DerimError, TransportError
from derim.grid.fleet import FleetAccess, fresh
from derim.grid.openadr.config import OpenAdrConfig, Programme, SignalRule
from derim.grid.openadr.dispatch import LimitDispatcher
from derim.grid.openadr.signals import (
    Event,
    Interval,
    SignalError,
    Step,
    event_id,
    intervals_of,
    probe,
    programmes_for,
    signal_for,
    steps_for,
)
from derim.models.device import DERDevice
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
LOST_AFTER_POLLS = 3
"""The VTN counts as lost after this many poll periods without an answer."""
STOP_GRACE_S = 2.0
"""How long a poll or report under way may take to finish when the link stops, s."""
REMEMBERED_OPTS = 1000
"""Answers kept to repeat when an event is cancelled (the oldest are forgotten first)."""
REPORT_SPECIFIER = "DERIM-TELEMETRY"
ENDED = ("cancelled", "completed")
Reading = list[tuple[datetime, float]]
NOT_STARTED = "not started"
REGISTERING = "registering"
UNREACHABLE = "vtn unreachable"
REGISTERED = "registered"
LOST = "vtn lost"
STOPPED = "stopped"


class OpenAdrVen:
    """A VEN that carries its programmes' events on DERIM device groups and reports them."""

    def __init__(self, config: OpenAdrConfig, fleet: FleetAccess) -> None:
        for path in (config.cert_path, config.key_path, config.ca_path):
            if path is not None and not path.is_file():
                raise ConfigError(f"openadr: {path} is not a readable file")
        self.config = config
        self.fleet = fleet
        self.dispatcher = LimitDispatcher(fleet)
        self.client: OpenADRClient | None = None
        self.ven_id = config.ven_id
        """The venID: the configured one, else the one the VTN gave at the last registration."""
        self._opts: dict[str, str] = {}
        self._phase = NOT_STARTED
        self._last_contact = 0.0
        self._lost = False
        self._replaced_senders: list[asyncio.Task[None]] = []
        self._running: asyncio.Task[None] | None = None
        self._dispatching: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        """Where the link stands: ``not started``, ``registering``, ``vtn unreachable`` (tries
        failing), ``registered``, ``vtn lost`` (registered, polls unanswered) or ``stopped``."""
        if self._phase == REGISTERED and self._lost:
            return LOST
        return self._phase

    async def run(self) -> None:
        """Register, then follow the VTN until cancelled; register again if the VTN ends the
        registration. Never raises for the VTN's sake."""
        for weakness in self.config.weaknesses():
            log.warning("openadr: weak security towards %s: %s", self.config.vtn_url, weakness)
        self._running = asyncio.current_task()
        self._dispatching = asyncio.create_task(self.dispatcher.run(), name="derim-openadr")
        try:
            while True:
                self._phase, self._lost = REGISTERING, False
                self.client = await self._registered_client()
                self._phase = REGISTERED
                await self._follow(self.client)
                log.warning("openadr: registration with the VTN ended; registering again")
                await self._stop_client()
        finally:
            self._phase = STOPPED
            await self._stop_client()
            await cancel_and_wait(self._dispatching)

    async def aclose(self) -> None:
        """Stop polling, reporting and dispatching (limits already sent stay until they
        lapse)."""
        if self._running is not None and self._running is not asyncio.current_task():
            await cancel_and_wait(self._running)
        await self._stop_client()
        await cancel_and_wait(self._dispatching)

    async def handle_event(self, event: Event) -> str:
        """openleadr's ``on_event`` / ``on_update_event``: plan the event, hand its steps to
        the dispatcher and answer ``optIn``, or ``optOut`` when no group can carry it or a
        signal is malformed."""
        key = event_id(event)
        descriptor = event["event_descriptor"]
        if descriptor.get("event_status") in ENDED:
            self.dispatcher.drop(key)
            return self._opts.pop(key, "optOut")
        try:
            steps = await self._plan(event)
        except SignalError as exc:
            log.warning("openadr: opting out of event %s: %s", key, exc)
            return self._opt_out(key)
        if steps is None:
            log.info("openadr: opting out of event %s: no mapped group can carry it", key)
            return self._opt_out(key)
        if not descriptor.get("test_event"):
            self.dispatcher.put(key, steps)
        return self._answer(key, "optIn")

    def _opt_out(self, key: str) -> str:
        self.dispatcher.drop(key)
        return self._answer(key, "optOut")

    def _answer(self, key: str, opt: str) -> str:
        self._opts.pop(key, None)
        self._opts[key] = opt
        if len(self._opts) > REMEMBERED_OPTS:
            del self._opts[next(iter(self._opts))]
        return opt

    async def group_power(self, programme: Programme) -> Reading:
        """The group's active power now (kW, delivered to the grid positive): the sum of its
        members' fresh readings; no value when none is fresh or storage fails."""
        members = [d.id for d in self._members(programme)]
        try:
            latest = await self.fleet.latest(members)
        except DerimError as exc:
            log.warning("openadr: no readings for the %s report: %s", programme.group, exc)
            return []
        now = datetime.now(UTC)
        values = [
            float(power)
            for reading in fresh(latest, now, self.config.report_stale_after_s).values()
            if isinstance(power := reading.get("power_kw"), int | float)
        ]
        return [(now, round(sum(values), 3))] if values else []

    async def _plan(self, event: Event) -> list[Step] | None:
        """Every mapped group's steps for the event, for the members that can carry them;
        None when no mapped group has such a member."""
        steps: list[Step] = []
        carried = False
        try:
            for programme in programmes_for(self.config.programmes, event):
                found = signal_for(programme, event)
                if found is None:
                    continue
                rule, signal = found
                intervals = intervals_of(event, signal)
                members = await self._carriers(programme, rule, intervals, signal)
                carried = carried or bool(members)
                steps.extend(steps_for(rule, intervals, signal, members))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SignalError(f"malformed event: {exc!r}") from exc
        return steps if carried else None

    async def _carriers(
        self,
        programme: Programme,
        rule: SignalRule,
        intervals: list[Interval],
        signal: Mapping[str, Any],
    ) -> list[DERDevice]:
        """The members the control layer accepts the event's first limit for (dry run)."""
        candidates = self._members(programme)
        if rule.kind == "group_kw":
            candidates = [d for d in candidates if d.rated_power_kw]
        tentative = steps_for(rule, intervals, signal, candidates)
        carriers = []
        for device in candidates:
            try:
                await self.fleet.submit(device.id, probe(tentative, device))
            except DerimError as exc:
                log.info("openadr: %s cannot carry the event: %s", device.id, exc)
            else:
                carriers.append(device)
        return carriers

    def _members(self, programme: Programme) -> list[DERDevice]:
        kinds = programme.device_types
        return [
            d for d in self.fleet.members(programme.group) if not kinds or d.device_type in kinds
        ]

    async def _registered_client(self) -> OpenADRClient:
        """A client registered with the VTN, after as many tries as it takes; the first
        failure is logged as a warning, later ones at debug."""
        backoff = Backoff(initial_s=self.config.retry_initial_s, max_s=self.config.retry_max_s)
        failures = 0
        while True:
            try:
                client = await self._register()
            except TransportError as exc:
                self._phase = UNREACHABLE
                if failures == 0:
                    log.warning(
                        "openadr: VTN %s not available (%s); retrying, waits growing to %g s",
                        self.config.vtn_url,
                        exc,
                        backoff.max_s,
                    )
                else:
                    log.debug("openadr: VTN still not available: %s", exc)
                failures += 1
                await asyncio.sleep(backoff.delay(failures))
                continue
            log.info(
                "openadr: registered with %s as venID %s (%d failed tries before)",
                self.config.vtn_url,
                client.ven_id,
                failures,
            )
            return client

    async def _register(self) -> OpenADRClient:
        """One registration: query, create party registration, reports, first event sync.
        Raises ``TransportError`` when the VTN is unreachable or does not register us."""
        await _reachable(self.config.vtn_url)
        client = self._new_client()
        self._last_contact = time.monotonic()
        try:
            await client.run()
        except Exception as exc:  # openleadr may raise anything here: this is the boundary
            await _stop(client)
            raise TransportError(f"registration failed: {exc!r}") from exc
        if client.registration_id is None:
            await _stop(client)
            raise TransportError("the VTN did not register this VEN")
        self.ven_id = client.ven_id
        return client

    async def _follow(self, client: OpenADRClient) -> None:
        """Watch a registered client poll (openleadr's scheduler does the polling); log once
        when the VTN stops answering and once when it answers again. Returns when the
        registration has ended."""
        period = client.poll_frequency.total_seconds()
        while client.registration_id is not None and client.scheduler.running:
            await asyncio.sleep(period)
            silent = time.monotonic() - self._last_contact > LOST_AFTER_POLLS * period
            if silent and not self._lost:
                log.warning("openadr: VTN %s not answering polls", self.config.vtn_url)
            elif self._lost and not silent:
                log.info("openadr: VTN %s answering again", self.config.vtn_url)
            self._lost = silent

    def _contact(self, client: OpenADRClient, message_type: str, payload: object) -> None:
        """openleadr hook: a message from the VTN was parsed. Before openleadr re-registers
        (asked to by the VTN) it starts a new report sender without stopping the old one,
        which is kept here to be stopped with the client."""
        self._last_contact = time.monotonic()
        sender = client.report_queue_task
        if message_type == "oadrRequestReregistration" and sender is not None:
            self._replaced_senders.append(sender)
        elif message_type == "oadrDistributeEvent" and isinstance(payload, Mapping):
            self._distributed(client, payload.get("events") or [])

    def _distributed(self, client: OpenADRClient, events: list[Event]) -> None:
        """An oadrDistributeEvent lists every event the VTN holds for this VEN: release the
        ones it no longer lists, and have openleadr forget them too, so that one coming back
        is planned again rather than answered from openleadr's memory."""
        listed = {event_id(event) for event in events}
        for key in self.dispatcher.keep_only(listed):
            log.info("openadr: event %s no longer distributed by the VTN: released", key)
        for key in [k for k in self._opts if k not in listed]:
            del self._opts[key]
        client.received_events[:] = [e for e in client.received_events if event_id(e) in listed]
        for key in [k for k in client.responded_events if k not in listed]:
            del client.responded_events[key]

    def _new_client(self) -> OpenADRClient:
        config = self.config
        passphrase = config.key_passphrase
        client = OpenADRClient(
            ven_name=config.ven_name,
            vtn_url=config.vtn_url,
            ven_id=self.ven_id,
            cert=None if config.cert_path is None else str(config.cert_path),
            key=None if config.key_path is None else str(config.key_path),
            passphrase=None if passphrase is None else passphrase.get_secret_value(),
            ca_file=None if config.ca_path is None else str(config.ca_path),
            vtn_fingerprint=config.vtn_fingerprint,
            show_fingerprint=False,
            check_hostname=config.check_hostname,
            disable_signature=not config.sign_messages,
        )
        client.add_handler("on_event", self.handle_event)
        client.add_handler("on_update_event", self.handle_event)
        client.add_hook("after_parse_xml", partial(self._contact, client))
        shortest = timedelta(seconds=config.report_interval_s)
        longest = max(shortest, timedelta(hours=1))
        for programme in config.programmes:
            client.add_report(
                callback=partial(self.group_power, programme),
                resource_id=programme.resource,
                measurement="real_power",
                unit="W",
                scale="k",
                report_specifier_id=REPORT_SPECIFIER,
                r_id=programme.resource,
                report_duration=longest,
                sampling_rate=objects.SamplingRate(min_period=shortest, max_period=longest),
                market_context=programme.market_context,
            )
        return client

    async def _stop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await _stop(client)
        while self._replaced_senders:
            await cancel_and_wait(self._replaced_senders.pop())


async def _reachable(url: str) -> None:
    """Open and close a TCP connection to the VTN (``TransportError`` if that fails), so an
    absent VTN costs one line in the log rather than openleadr's errors at every try."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError) as exc:
        raise TransportError(f"cannot connect to {parts.hostname}:{port}: {exc}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _stop(client: OpenADRClient) -> None:
    """Stop a client's scheduler, report sender and HTTP session (idempotent).

    APScheduler's ``shutdown`` cancels the jobs under way and logs each cancellation as a
    failed job, so the scheduler is paused first and its jobs (a poll, a report) get
    ``STOP_GRACE_S`` to finish; the executor's set of running jobs is private, hence the
    ``getattr``.
    """
    scheduler = client.scheduler
    if scheduler.running:
        scheduler.pause()
        executor = getattr(scheduler, "_executors", {}).get("default")
        running = set(getattr(executor, "_pending_futures", ()))
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        scheduler.shutdown(wait=False)
    if client.report_queue_task is not None:
        await cancel_and_wait(client.report_queue_task)
    if client.client_session is not None:
        await client.client_session.close()
