"""Carries a command through its lifecycle and records every step.

requested -> validated -> sent -> acknowledged | rejected | failed | timed_out, or expired
(past ``expires_at`` before it could be sent); a dry run ends at validated. Each step is
timestamped in the record's ``history`` and the record is saved at each step, so
``GET /api/v1/commands/{id}`` shows a command still waiting for its device. ``submit`` waits
up to ``wait_s`` for the final answer; a command still under way then is carried on in the
background and its record completed when the device answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from derim.adapters.manager import AdapterManager
from derim.adapters.mqtt.adapter import MqttAdapter
from derim.adapters.ocpp.central import CentralSystem
from derim.control.store import CommandStore
from derim.errors import DeviceRejected, InvalidRequestError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.device import DERDevice
from derim.storage.registry import DeviceRegistry
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)
POWER_COMMANDS = frozenset({CommandType.SET_ACTIVE_POWER, CommandType.SET_POWER_LIMIT})
Send = Callable[[], Awaitable[CommandResult]]


class Controller:
    """Validates, sends and records commands for every kind of device."""

    def __init__(
        self,
        registry: DeviceRegistry,
        store: CommandStore,
        adapters: AdapterManager,
        *,
        wait_s: float,
    ) -> None:
        self.registry = registry
        self.store = store
        self.adapters = adapters
        self.wait_s = wait_s
        self.mqtt: MqttAdapter | None = None
        self.ocpp: CentralSystem | None = None
        self._under_way: set[asyncio.Task[DeviceRejected | TransportError | None]] = set()

    async def submit(self, device_id: str, request: CommandRequest) -> CommandResult:
        """Check, record and (unless a dry run or expired) send a command.

        Raises ``InvalidRequestError`` (nothing sent, nothing recorded) when the command does
        not suit the device, and, when the device answered within ``wait_s``, the adapter's
        ``DeviceRejected`` or ``TransportError`` (recorded as rejected or failed).
        """
        device = self.registry.get(device_id)
        request = request.normalized()
        _check_rating(device, request)
        send = self._sender(device, request)
        record = CommandResult(device_id=device_id, request=request)
        _step(record, CommandStatus.REQUESTED)
        _step(record, CommandStatus.VALIDATED)
        if request.expires_at is not None and request.expires_at <= datetime.now(UTC):
            _step(record, CommandStatus.EXPIRED, "expired before it could be sent")
        elif request.dry_run:
            record.message = "valid; not sent (dry run)"
        else:
            _step(record, CommandStatus.SENT)
        await self.store.save(record)
        if record.status is not CommandStatus.SENT:
            return record
        task = asyncio.create_task(self._carry_out(record, send), name=f"derim-command-{device_id}")
        self._under_way.add(task)
        task.add_done_callback(self._under_way.discard)
        done, _ = await asyncio.wait({task}, timeout=self.wait_s)
        failure = task.result() if done else None
        if failure is not None:
            raise failure
        return record

    async def aclose(self) -> None:
        """Stop waiting for commands still under way (their records stay at ``sent``)."""
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
            _step(record, answer.status, answer.message)
        await self.store.save(record)
        return failure

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
