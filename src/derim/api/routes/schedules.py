"""``/api/v1/schedules``: time-ordered setpoints for a device or a group."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from derim.api.auth import Operator, Viewer, audit
from derim.api.deps import get_services
from derim.control.schedules import LATE_GRACE_S, Schedule, ScheduleRequest
from derim.errors import InvalidRequestError
from derim.services import Services

router = APIRouter(prefix="/api/v1/schedules", tags=["control"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("", status_code=201)
async def create_schedule(
    body: ScheduleRequest, services: ServicesDep, caller: Operator
) -> Schedule:
    """Create a schedule; each entry is checked against every addressed device now (422 naming
    the entry and device), and sent at its time as source ``schedule``."""
    targets = _targets(body, services)
    if body.entries[0].at < datetime.now(UTC) - timedelta(seconds=LATE_GRACE_S):
        raise InvalidRequestError("entries.0.at", "lies in the past")
    for index, entry in enumerate(body.entries):
        for device_id in targets:
            try:
                await services.controller.check(device_id, entry.request())
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"entries.{index}", f"{device_id}: {exc}") from exc
    schedule = Schedule(**body.model_dump())
    await services.controller.store.save_schedule(schedule)
    services.scheduler.add(schedule)
    target = body.device_id or f"group:{body.group}"
    await audit(services, caller, "schedule.create", target, "ok",
                schedule_id=str(schedule.schedule_id), entries=len(body.entries))  # fmt: skip
    return schedule


@router.get("")
async def list_schedules(
    services: ServicesDep,
    caller: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Schedule]:
    """Schedules, newest first, with each entry's state and the commands it sent."""
    return await services.controller.store.schedules(limit)


@router.get("/{schedule_id}")
async def get_schedule(schedule_id: uuid.UUID, services: ServicesDep, caller: Viewer) -> Schedule:
    """One schedule; 404 if unknown."""
    live = services.scheduler.get(schedule_id)
    return live if live is not None else await services.controller.store.schedule(str(schedule_id))


@router.delete("/{schedule_id}")
async def cancel_schedule(
    schedule_id: uuid.UUID, services: ServicesDep, caller: Operator
) -> Schedule:
    """Cancel a schedule: entries not yet sent are dropped (limits already sent keep their own
    expiry). 404 if unknown."""
    schedule = services.scheduler.get(schedule_id)
    if schedule is None:
        schedule = await services.controller.store.schedule(str(schedule_id))
    services.scheduler.cancel(schedule)
    await services.controller.store.save_schedule(schedule)
    await audit(services, caller, "schedule.cancel", str(schedule_id), "ok")
    return schedule


def _targets(body: ScheduleRequest, services: Services) -> list[str]:
    """The devices a new schedule addresses; 404 for an unknown device, 422 for an empty group."""
    if body.device_id is not None:
        services.registry.get(body.device_id)
        return [body.device_id]
    members = [d.id for d in services.registry.list() if body.group in d.groups]
    if not members:
        raise InvalidRequestError("group", f"no device is in group {body.group!r}")
    return members
