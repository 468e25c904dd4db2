"""Carries a command through its lifecycle and records every step, arbitrating power limits.

requested -> validated -> sent -> acknowledged | rejected | failed | timed_out, or expired
(past ``expires_at`` before it could be sent); a dry run ends at validated. Each step is
timestamped in the record's ``history`` and the record is saved at each step, so
``GET /api/v1/commands/{id}`` shows a command still waiting for its device. ``submit`` waits
up to ``wait_s`` for the final answer; a command still under way then is carried on in the
background and its record completed when the device answers. Each record that reaches a final
status is also published as a ``command_result`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from derim.adapters.manager import AdapterManager
from derim.adapters.mqtt.adapter import MqttAdapter
from derim.adapters.ocpp.central import CentralSystem
from derim.bus.events import Event, EventType
from derim.control.arbitration import Channel, LimitBook, applied, channel_of, claim_of
from derim.control.safety import SETPOINTS, Setpoint, check_limits
from derim.control.store import CommandStore
from derim.errors import DerimError, DeviceRejected, InvalidRequestError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.device import DERDevice
from derim.storage.registry import DeviceRegistry
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)
POWER_COMMANDS = frozenset({CommandType.SET_ACTIVE_POWER, CommandType.SET_POWER_LIMIT})
LIMIT_COMMANDS = frozenset({CommandType.SET_POWER_LIMIT, CommandType.CLEAR_POWER_LIMIT})
ARBITRATION = "arbitration"
"""The source of the commands that apply the next limit after one lapsed."""
Send = Callable[[], Awaitable[CommandResult]]
Latest = Callable[[str], Awaitable[dict[str, object] | None]]
"""The latest stored reading of a device, as a field dict."""
PublishEvent = Callable[[Event], None]


class Controller:
    """Validates, sends and records commands for every kind of device."""

    def __init__(
        self,
        registry: DeviceRegistry,
        store: CommandStore,
        adapters: AdapterManager,
        latest: Latest,
        *,
        wait_s: float,
        events: PublishEvent | None = None,
    ) -> None:
        self.registry = registry
        self.events = events
        """Told each command's result once its status is final."""
        self.latest = latest
        self.store = store
        self.adapters = adapters
        self.wait_s = wait_s
        self.mqtt: MqttAdapter | None = None
        self.ocpp: CentralSystem | None = None
        self._under_way: set[asyncio.Task[DeviceRejected | TransportError | None]] = set()
        self.limits = LimitBook()
        self._setpoints: dict[str, Setpoint] = {}
        self._bases: dict[Channel, CommandRequest] = {}
        self._limits_changed = asyncio.Event()
        self._expiring: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start lapsing power limits at their expiry."""
        self._expiring = asyncio.create_task(self._expire_limits(), name="derim-limit-expiry")

    async def submit(self, device_id: str, request: CommandRequest) -> CommandResult:
        """Check, record and (unless a dry run or expired) send a command.

        A power limit goes through arbitration first (``derim.control.arbitration``): what is
        sent is the most restrictive limit any source holds. Raises ``InvalidRequestError``
        (nothing sent, nothing recorded) when the command does not suit the device, and, when
        the device answered within ``wait_s``, the adapter's ``DeviceRejected`` or
        ``TransportError`` (recorded as rejected or failed).
        """
        device, request = await self.check(device_id, request)
        now = datetime.now(UTC)
        if request.expires_at is not None and request.expires_at <= now:
            return await self._record(device, request, CommandStatus.EXPIRED)
        if request.dry_run:
            return await self._record(device, request, CommandStatus.VALIDATED)
        outgoing, note = self._arbitrate(device, request, now)
        return await self._record(device, request, CommandStatus.SENT, outgoing, note)

    async def check(
        self, device_id: str, request: CommandRequest
    ) -> tuple[DERDevice, CommandRequest]:
        """The device and the normalized command, once checked against the device's rating,
        its limits (``derim.control.safety``) and its adapter (``InvalidRequestError``
        otherwise); nothing is sent or recorded."""
        device = self.registry.get(device_id)
        request = request.normalized()
        _check_rating(device, request)
        if device.limits is not None and request.command in SETPOINTS:
            soc = None
            if (
                device.limits.soc_min_percent is not None
                or device.limits.soc_max_percent is not None
            ):
                soc = await self._state_of_charge(device_id)
            previous = self._setpoints.get(device_id)
            check_limits(device, request, soc, previous, datetime.now(UTC))
        self._sender(device, request)
        return device, request

    async def _state_of_charge(self, device_id: str) -> float | None:
        """The device's latest reported state of charge (%), if any."""
        latest = await self.latest(device_id)
        soc = None if latest is None else latest.get("soc_percent")
        return float(soc) if isinstance(soc, int | float) else None

    def _arbitrate(
        self, device: DERDevice, request: CommandRequest, now: datetime
    ) -> tuple[CommandRequest, str]:
        """The command to send for ``request`` once its source's limit joins the others."""
        if request.command not in LIMIT_COMMANDS:
            return request, ""
        channel = channel_of(device.id, request.parameters)
        if request.command is CommandType.SET_POWER_LIMIT:
            claim = claim_of(request, device.rated_power_kw)
            outgoing = applied(claim, request)
            self._sender(device, outgoing)
            self.limits.claim(channel, claim)
        else:
            self.limits.release(channel, request.source)
        self._bases[channel] = request
        self._limits_changed.set()
        return self._effective(channel, request, now)

    def _effective(
        self, channel: Channel, base: CommandRequest, now: datetime
    ) -> tuple[CommandRequest, str]:
        winner = self.limits.effective(channel, now)
        if winner is None:
            return applied(None, base), "no source holds a limit: cleared"
        note = f"effective limit {winner.value:g} {winner.unit}, from {winner.source}"
        return applied(winner, base), note

    async def _record(
        self,
        device: DERDevice,
        request: CommandRequest,
        status: CommandStatus,
        outgoing: CommandRequest | None = None,
        note: str = "",
    ) -> CommandResult:
        """Record a command at ``status``; when that is ``sent``, send ``outgoing`` and wait up
        to ``wait_s`` for the device's answer."""
        record = CommandResult(device_id=device.id, request=request)
        _step(record, CommandStatus.REQUESTED)
        _step(record, CommandStatus.VALIDATED)
        if status is CommandStatus.EXPIRED:
            _step(record, status, "expired before it could be sent")
        elif status is CommandStatus.VALIDATED:
            record.message = "valid; not sent (dry run)"
        else:
            _step(record, status, note)
        await self.store.save(record)
        if outgoing is None:
            self._announce(record)
            return record
        send = self._sender(device, outgoing)
        if outgoing.command in SETPOINTS and outgoing.unit == "kW" and outgoing.value is not None:
            self._setpoints[device.id] = Setpoint(outgoing.value, datetime.now(UTC))
        task = asyncio.create_task(self._carry_out(record, send), name=f"derim-command-{device.id}")
        self._under_way.add(task)
        task.add_done_callback(self._under_way.discard)
        task.add_done_callback(lambda _: self._settle(device.id, request, record))
        done, _ = await asyncio.wait({task}, timeout=self.wait_s)
        failure = task.result() if done else None
        if failure is not None:
            raise failure
        return record

    def _settle(self, device_id: str, request: CommandRequest, record: CommandResult) -> None:
        """A limit the device did not take is not held: its source's claim is dropped."""
        if request.command is CommandType.SET_POWER_LIMIT and record.status not in (
            CommandStatus.ACKNOWLEDGED,
            CommandStatus.SENT,
        ):
            self.limits.release(channel_of(device_id, request.parameters), request.source)

    async def _expire_limits(self) -> None:
        """Sleep until the next limit lapses, then give each device its next limit."""
        while True:
            self._limits_changed.clear()
            due = self.limits.next_expiry()
            delay = None if due is None else max(0.0, (due - datetime.now(UTC)).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._limits_changed.wait()
            now = datetime.now(UTC)
            for channel in self.limits.expire(now):
                await self._reapply(channel, now)

    async def _reapply(self, channel: Channel, now: datetime) -> None:
        """Send a channel's next limit after one lapsed (recorded as source ``arbitration``)."""
        device = self.registry.find(channel[0])
        base = self._bases.get(channel)
        if device is None or base is None:
            return
        outgoing, note = self._effective(channel, base, now)
        outgoing = outgoing.model_copy(update={"source": ARBITRATION})
        try:
            await self._record(device, outgoing, CommandStatus.SENT, outgoing, f"lapsed; {note}")
        except DerimError as exc:
            log.warning("device %s: could not apply its next limit: %s", device.id, exc)

    async def aclose(self) -> None:
        """Stop lapsing limits and waiting for commands still under way (their records stay
        at ``sent``)."""
        await cancel_and_wait(self._expiring)
        for task in list(self._under_way):
            await cancel_and_wait(task)

    async def _carry_out(
        self, record: CommandResult, send: Send
    ) -> DeviceRejected | TransportError | None:
        """Send, then complete and save the record with the device's answer; the refusal or
        transport failure, if that was the answer."""
        failure: DeviceRejected | TransportError | None = None
        try:
            answer = await send()
        except DeviceRejected as exc:
            failure = exc
            _step(record, CommandStatus.REJECTED, str(exc))
        except TransportError as exc:
            failure = exc
            _step(record, CommandStatus.FAILED, f"device unreachable: {exc}")
        else:
            record.device_response = answer.device_response
            note = f"{record.message}; " if record.message else ""
            _step(record, answer.status, note + answer.message)
        await self.store.save(record)
        self._announce(record)
        return failure

    def _announce(self, record: CommandResult) -> None:
        """Publish a command's record as a ``command_result`` event if its status is final."""
        if self.events is None or not record.is_final:
            return
        data: dict[str, object] = {
            "command_id": str(record.command_id),
            "command": record.request.command.value,
            "status": record.status.value,
            "source": record.request.source,
            "message": record.message,
        }
        if record.device_response is not None:
            data["device_response"] = record.device_response
        self.events(Event(type=EventType.COMMAND_RESULT, device_id=record.device_id, data=data))

    def _sender(self, device: DERDevice, request: CommandRequest) -> Send:
        """What sends ``request`` to ``device``, once its adapter has checked it (422 if not)."""
        if device.protocol == "mqtt" and self.mqtt is not None:
            mqtt = self.mqtt
            mqtt.commands_for(device)
            return lambda: mqtt.send_to(device, request)
        if device.protocol == "ocpp" and self.ocpp is not None:
            central = self.ocpp
            central.validate(device, request)
            return lambda: central.send(device, request)
        adapter = self.adapters.controller(device.id)
        if adapter is None:
            raise InvalidRequestError(
                "device_id", f"device {device.id!r} ({device.protocol}) takes no commands"
            )
        adapter.validate(request)
        return lambda: adapter.send(request)


def _step(record: CommandResult, status: CommandStatus, message: str | None = None) -> None:
    """Move ``record`` to ``status`` now."""
    record.status = status
    if message is not None:
        record.message = message
    record.history.append((status, datetime.now(UTC)))


def _check_rating(device: DERDevice, command: CommandRequest) -> None:
    """Refuse power setpoints beyond the device's nameplate rating."""
    rated = device.rated_power_kw
    if command.command not in POWER_COMMANDS or rated is None or command.value is None:
        return
    if command.unit == "kW" and abs(command.value) > rated:
        raise InvalidRequestError(
            "value", f"{command.value} kW exceeds the device's rating of {rated} kW"
        )
