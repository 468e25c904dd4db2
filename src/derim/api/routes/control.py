"""``/api/v1/control``: commands to devices, checked before sending and confirmed after."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from derim.api.deps import get_services
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.device import DERDevice
from derim.services import Services

router = APIRouter(prefix="/api/v1/control", tags=["control"])
ServicesDep = Annotated[Services, Depends(get_services)]
POWER_COMMANDS = frozenset({CommandType.SET_ACTIVE_POWER, CommandType.SET_POWER_LIMIT})


@router.post("/{device_id}")
async def control(device_id: str, command: CommandRequest, services: ServicesDep) -> CommandResult:
    """Send a command and report what the device did.

    Checked first against the device's rating and its profile's limits (422 naming what is
    wrong, nothing sent); ``dry_run`` stops there. The answer is ``acknowledged`` only when the
    device confirmed it (read-back), ``failed`` when the read-back differs; a device refusal is
    409 and an unreachable device 503. An expired command is not sent. ``battery_charge`` and
    ``battery_discharge`` are carried out, and recorded, as the ``set_active_power`` they mean.
    """
    command = command.normalized()
    device = services.registry.get(device_id)
    _check_rating(device, command)
    send = _sender(services, device, command)
    result = CommandResult(device_id=device_id, request=command)
    now = datetime.now(UTC)
    if command.expires_at is not None and command.expires_at <= now:
        result.status = CommandStatus.EXPIRED
        result.message = "expired before it could be sent"
    elif command.dry_run:
        result.status = CommandStatus.VALIDATED
        result.message = "valid; not sent (dry run)"
    else:
        return await send()
    result.history.append((result.status, now))
    return result


def _sender(
    services: Services, device: DERDevice, command: CommandRequest
) -> Callable[[], Awaitable[CommandResult]]:
    """What sends ``command`` to ``device``, once its adapter has checked it (422 if not)."""
    if device.protocol == "mqtt" and services.mqtt is not None:
        mqtt = services.mqtt
        mqtt.commands_for(device)
        return lambda: mqtt.send_to(device, command)
    if device.protocol == "ocpp" and services.ocpp is not None:
        central = services.ocpp
        central.validate(device, command)
        return lambda: central.send(device, command)
    adapter = services.adapters.controller(device.id)
    if adapter is None:
        raise InvalidRequestError(
            "device_id", f"device {device.id!r} ({device.protocol}) takes no commands"
        )
    adapter.validate(command)
    return lambda: adapter.send(command)


def _check_rating(device: DERDevice, command: CommandRequest) -> None:
    """Refuse power setpoints beyond the device's nameplate rating."""
    rated = device.rated_power_kw
    if command.command not in POWER_COMMANDS or rated is None or command.value is None:
        return
    if command.unit == "kW" and abs(command.value) > rated:
        raise InvalidRequestError(
            "value", f"{command.value} kW exceeds the device's rating of {rated} kW"
        )
