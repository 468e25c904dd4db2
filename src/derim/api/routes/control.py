"""``/api/v1/control`` and ``/api/v1/commands``: commands to devices and their records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from derim.api.auth import Operator, Viewer, audit
from derim.api.deps import get_services
from derim.api.errors import ErrorBody
from derim.errors import DerimError
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.services import Services

router = APIRouter(tags=["control"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post(
    "/api/v1/control/{device_id}",
    responses={202: {"description": "Sent; the device has not answered yet.",
                     "model": CommandResult},
               503: {"description": "The device cannot be reached.", "model": ErrorBody},
               504: {"description": "The device did not answer in time.", "model": ErrorBody}},
)  # fmt: skip
async def control(
    device_id: str,
    command: CommandRequest,
    services: ServicesDep,
    response: Response,
    caller: Operator,
) -> CommandResult:
    """Send a command and report what the device did, as the command's record.

    Checked first against the device's rating and its adapter's limits (422 naming what is
    wrong, nothing sent); ``dry_run`` stops there. The answer is ``acknowledged`` only when the
    device confirmed it (a read-back, or the charger's Accepted), ``failed`` when a read-back
    differs, ``rejected`` when the device refused (a Modbus exception is 409) and 503 when it
    cannot be reached. An expired command is not sent. When the device has not answered within
    ``control_wait_s`` the reply is 202 with the record at ``sent``: follow it at
    ``GET /api/v1/commands/{command_id}``. ``battery_charge`` and ``battery_discharge`` are
    carried out, and recorded, as the ``set_active_power`` they mean.
    """
    detail = command.model_dump(mode="json", exclude_defaults=True)
    try:
        record = await services.controller.submit(device_id, command)
    except DerimError as exc:
        await audit(services, caller, "control", device_id, f"refused: {exc}", request=detail)
        raise
    await audit(
        services,
        caller,
        "control",
        device_id,
        record.status.value,
        request=detail,
        command_id=str(record.command_id),
    )
    if record.status is CommandStatus.SENT:
        response.status_code = 202
    return record


@router.get("/api/v1/commands/{command_id}")
async def get_command(command_id: str, services: ServicesDep, caller: Viewer) -> CommandResult:
    """One command's record: request, status, each step's time, the device's answer; 404 if
    unknown."""
    return await services.controller.store.get(command_id)


@router.get("/api/v1/devices/{device_id}/commands")
async def device_commands(
    device_id: str,
    services: ServicesDep,
    caller: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        datetime | None, Query(description="Only commands requested earlier.")
    ] = None,
) -> list[CommandResult]:
    """A device's commands, newest first (404 if the device is unknown)."""
    services.registry.get(device_id)
    return await services.controller.store.for_device(device_id, limit=limit, before=before)
