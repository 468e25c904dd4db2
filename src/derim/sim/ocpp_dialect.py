"""How a simulated charger answers the CSMS, whatever the OCPP version: :class:`Dialect` holds
the handling both versions share (remote start and stop, charging profiles, availability, reset,
trigger); its subclasses (:mod:`derim.sim.ocpp_v16`, :mod:`derim.sim.ocpp_v201`)
hold the version's messages and the shapes of its answers.

Handlers are plain functions that never await: they return the fields of their answer and leave
any follow-up to ``SimulatedCharger._later``, which runs it once the answer went out.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from derim.sim import ocpp_profiles as prof
from derim.sim.ocpp_state import TX, Connector, FollowUp, Session, now_iso

if TYPE_CHECKING:
    from derim.sim.ocpp_charger import SimulatedCharger

logger = logging.getLogger(__name__)


class Dialect(abc.ABC):
    """The messages of one OCPP version, for a :class:`SimulatedCharger`."""

    subprotocol: Subprotocol
    version: Any  # the ``ocpp`` package of the version (ocpp.v16, ocpp.v201)

    def __init__(self, charger: SimulatedCharger) -> None:
        self.c = charger

    def charge_point(self, ws: ClientConnection) -> Any:
        """The library's ChargePoint of this version on ``ws``."""
        timeout = self.c.response_timeout_s
        return self.version.ChargePoint(self.c.charge_point_id, ws, response_timeout=timeout)

    async def heartbeat(self) -> None:
        """Heartbeat."""
        await self.c.call(self.version.call.Heartbeat())

    async def boot(self, *, triggered: bool = False) -> tuple[str, int]:
        """BootNotification: (status, heartbeat interval in s)."""
        result = await self.c.call(self._boot_notification(triggered=triggered))
        return str(result.status), int(result.interval)

    # ---- what each version says its own way ------------------------------------------------

    @abc.abstractmethod
    def routes(self) -> dict[str, Callable[..., dict[str, Any]]]:
        """Handlers of the CSMS's calls by action; each returns the fields of its answer."""

    @abc.abstractmethod
    def _boot_notification(self, *, triggered: bool) -> Any:
        """The BootNotification call payload."""

    @abc.abstractmethod
    def status_of(self, conn: Connector) -> str:
        """The connector's status in this version's terms."""

    @abc.abstractmethod
    async def send_status(self, conn: Connector, status: str) -> None:
        """StatusNotification."""

    @abc.abstractmethod
    async def authorize(self, id_tag: str) -> bool:
        """Authorize: True if accepted."""

    @abc.abstractmethod
    async def start(self, conn: Connector, session: Session, trigger: str) -> bool:
        """Start a transaction, naming it in ``session.tx_id``: False when the CSMS refused
        the id tag (the charger then stops it)."""

    @abc.abstractmethod
    async def stop(self, conn: Connector, session: Session, tx: str, reason: str) -> None:
        """Report the end of transaction ``tx``."""

    @abc.abstractmethod
    async def meter(self, conn: Connector, context: str, *, plain: bool = False) -> None:
        """Meter values of ``conn`` (``plain``: a MeterValues message, also in a 2.0.1
        transaction)."""

    @abc.abstractmethod
    def parse_profile(self, connector_id: int, raw: dict[str, Any]) -> prof.Profile:
        """A charging profile of this version (raises ``ProfileError``)."""

    @abc.abstractmethod
    def _reading(self, value: float, unit: str) -> dict[str, Any]:
        """The value and unit fields of a sampled value."""

    # ---- shared by both versions -----------------------------------------------------------

    def _idle_status(self, conn: Connector) -> str:
        """Status of a connector without an EV: Available, or Unavailable when inoperative."""
        return "Available" if self.c.availability[conn.id] == "Operative" else "Unavailable"

    def _meter_value(self, conn: Connector, context: str) -> dict[str, Any]:
        """A MeterValue of ``conn``'s samples now, read in ``context``."""
        samples = [
            self._reading(value, unit)
            | {"context": context, "measurand": measurand, "phase": phase, "location": location}
            for measurand, value, unit, phase, location in self.c.samples(conn)
        ]
        return {"timestamp": now_iso(), "sampled_value": samples}

    def _accepts(self, attempt: Callable[[], bool]) -> dict[str, Any]:
        """``{"status": "Accepted"}`` if ``attempt()`` holds, else Rejected (also when it
        meets an unusable charging profile)."""
        try:
            accepted = attempt()
        except prof.ProfileError as exc:
            logger.info("%s: charging profile rejected: %s", self.c.charge_point_id, exc)
            accepted = False
        return {"status": "Accepted" if accepted else "Rejected"}

    def _data_transfer(self, **_: Any) -> dict[str, Any]:
        return {"status": "Accepted"}

    # ---- the CSMS's commands ---------------------------------------------------------------

    def _remote_start(
        self,
        connector_id: int | None,
        id_tag: str,
        raw: dict[str, Any] | None,
        start_id: int | None,
    ) -> dict[str, Any]:
        """Accept a remote start (its TxProfile ``raw``, if any) if :meth:`_claim` can."""

        def attempt() -> bool:
            profile = None if raw is None else self.parse_profile(connector_id or 0, raw)
            return self._claim(connector_id, id_tag, profile, start_id)

        return self._accepts(attempt)

    def _claim(
        self,
        connector_id: int | None,
        id_tag: str,
        profile: prof.Profile | None,
        remote_start_id: int | None,
    ) -> bool:
        """Claim ``connector_id`` (or the first free connector) and start a session there once
        answered; False if none is free and operative, or ``profile`` is no TxProfile."""
        c = self.c
        if profile is not None and profile.purpose is not TX:
            return False
        if connector_id in (None, 0):
            candidates = list(c.connectors.values())
        elif connector_id in c.connectors:
            candidates = [c.connectors[connector_id]]
        else:
            return False
        for conn in candidates:
            session = conn.session
            if c.availability[conn.id] != "Operative" or (
                session is not None and (session.tx_id is not None or session.starting)
            ):
                continue
            if session is None:  # the EV plugs in now
                conn.session = session = Session(id_tag, None, 30.0, 60.0)
            session.id_tag, session.starting, session.finished = id_tag, True, False
            session.remote_start_id = remote_start_id
            if profile is not None:
                session.tx_profile = replace(profile, connector_id=conn.id)
            c._later(functools.partial(c._begin, conn, "RemoteStart"))
            return True
        return False

    def _remote_stop(self, tx_id: str) -> dict[str, Any]:
        """Stop transaction ``tx_id`` once answered; Rejected if it is not running."""
        for conn in self.c.connectors.values():
            if conn.session is not None and conn.session.tx_id == tx_id:
                self.c._later(functools.partial(self.c._end, conn, "Remote", unplug=False))
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _set_profile(self, connector_id: int, raw: dict[str, Any]) -> dict[str, Any]:
        """Install profile ``raw`` if the charger accepts it (see :func:`ocpp_profiles.check`)."""
        c = self.c

        def attempt() -> bool:
            profile = self.parse_profile(connector_id, raw)
            conn = c.connectors.get(profile.connector_id)
            session = conn.session if conn is not None else None
            tx = session.tx_id if session is not None else None
            reason = prof.check(profile, connectors=len(c.connectors), transaction_id=tx)
            if reason is not None:
                logger.info("%s: profile %d rejected: %s", c.charge_point_id, profile.id, reason)
                return False
            c._advance_all()
            c.profiles = prof.install(c.profiles, profile)
            return True

        return self._accepts(attempt)

    def _clear_profiles(
        self,
        profile_id: int | None,
        connector_id: int | None,
        purpose: str | None,
        stack_level: int | None,
    ) -> dict[str, Any]:
        """Clear profiles by id, or by the criteria given; Unknown if none was cleared."""
        c = self.c
        c._advance_all()
        c.profiles, cleared = prof.clear(
            c.profiles,
            profile_id=profile_id,
            connector_id=connector_id,
            purpose=None if purpose is None else prof.WIRE_PURPOSES[purpose],
            stack_level=stack_level,
        )
        return {"status": "Accepted" if cleared else "Unknown"}

    def _composite(
        self, connector_id: int, duration: int, unit: str | None
    ) -> tuple[str, dict[str, Any]] | None:
        """(start, schedule fields) of the composite schedule from now, with limits in ``unit``
        (default W); None for an unknown connector."""
        c = self.c
        if connector_id != 0 and connector_id not in c.connectors:
            return None
        rate_unit: prof.Unit = "A" if unit == "A" else "W"
        start = datetime.now(UTC)
        periods = prof.composite_schedule(
            c.profiles,
            connector_id,
            start,
            duration,
            tx_start=c.connectors[connector_id].tx_start if connector_id else None,
            phases=c.phases,
            voltage_v=c.voltage_v,
            max_kw=c.max_power_kw,
        )
        limits = [prof.from_kw(p.limit, rate_unit, c.phases, c.voltage_v) for p in periods]
        schedule = [
            {"start_period": p.start_s, "limit": round(limit, 1)}
            for p, limit in zip(periods, limits, strict=True)
        ]
        fields = {"duration": duration, "charging_rate_unit": rate_unit}
        return now_iso(start), fields | {"charging_schedule_period": schedule}

    def _change_availability(self, connector_id: int, kind: str) -> dict[str, Any]:
        """Accepted, Scheduled (a transaction runs) or Rejected (unknown connector)."""
        c = self.c
        if connector_id != 0 and connector_id not in c.connectors:
            return {"status": "Rejected"}
        targets = list(c.connectors.values()) if connector_id == 0 else [c.connectors[connector_id]]
        answer = "Accepted"
        for conn in targets:
            if conn.running and kind != c.availability[conn.id]:
                conn.pending_availability, answer = kind, "Scheduled"
            else:
                c.availability[conn.id], conn.pending_availability = kind, None
        c._later(functools.partial(self._report, targets))
        return {"status": answer}

    async def _report(self, targets: list[Connector], force: bool = False) -> None:
        for conn in targets:
            await self.c._send_status(conn, force=force)

    def _reset(self, kind: str, *, hard: bool) -> dict[str, Any]:
        """Record a reset (Accepted); a hard one stops every transaction and drops the
        connection once answered."""
        self.c.resets.append(kind)
        if hard:
            self.c._later(functools.partial(self._reboot, kind))
        return {"status": "Accepted"}

    async def _reboot(self, kind: str) -> None:
        reason = "HardReset" if kind in ("Hard", "Immediate") else "SoftReset"
        for conn in self.c.connectors.values():
            if conn.running:
                await self.c._end(conn, reason, unplug=False)
        if self.c._ws is not None:
            await self.c._ws.close()

    def _trigger(self, message: str, connector_id: int | None) -> dict[str, Any]:
        """Accepted (and send ``message`` once answered), Rejected or NotImplemented."""
        c = self.c
        if connector_id not in (None, 0) and connector_id not in c.connectors:
            return {"status": "Rejected"}
        targets = [c.connectors[connector_id]] if connector_id else list(c.connectors.values())
        followups = self._triggers(targets)
        if message not in followups:
            return {"status": "NotImplemented"}
        c._later(followups[message])
        return {"status": "Accepted"}

    def _triggers(self, targets: list[Connector]) -> dict[str, FollowUp]:
        """What TriggerMessage can ask for, on ``targets``: the follow-up sending it."""
        return {
            "BootNotification": functools.partial(self.boot, triggered=True),
            "Heartbeat": self.heartbeat,
            "StatusNotification": functools.partial(self._report, targets, True),
            "MeterValues": functools.partial(self._meter_all, targets, plain=True),
        }

    async def _meter_all(self, targets: list[Connector], *, plain: bool = False) -> None:
        for conn in targets:
            if plain or conn.running:
                await self.c._send_meter(conn, "Trigger", plain=plain)
