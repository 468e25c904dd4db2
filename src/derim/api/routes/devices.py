"""``/api/v1/devices``: the device registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from derim.api.auth import Admin, Viewer, audit
from derim.api.deps import get_services
from derim.api.views import ConnectionStatus, DeviceView
from derim.errors import ConflictError
from derim.models.common import DeviceType
from derim.models.device import DERDevice, DevicePatch, apply_patch
from derim.models.session import ChargingSession, SessionState
from derim.security.network import check_target
from derim.services import Services

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
ServicesDep = Annotated[Services, Depends(get_services)]


def _view(device: DERDevice, services: Services) -> DeviceView:
    status = services.status(device)
    view = DeviceView.model_validate(device.model_dump())
    if status is not None:
        view.status = ConnectionStatus(
            state=status.state,
            last_seen=status.last_seen,
            last_error=status.last_error,
            consecutive_failures=status.consecutive_failures,
        )
    if device.protocol == "ocpp" and services.ocpp is not None:
        view.charger = services.ocpp.view(device.id)
    return view


@router.get("")
async def list_devices(
    services: ServicesDep,
    caller: Viewer,
    device_type: Annotated[DeviceType | None, Query(description="Only this type.")] = None,
    group: Annotated[str | None, Query(description="Only members of this group.")] = None,
) -> list[DeviceView]:
    """Every registered device with its connection status, optionally filtered."""
    return [
        _view(d, services)
        for d in services.registry.list()
        if (device_type is None or d.device_type == device_type)
        and (group is None or group in d.groups)
    ]


@router.post("", status_code=201)
async def create_device(device: DERDevice, services: ServicesDep, caller: Admin) -> DeviceView:
    """Register a device and start polling it if its protocol is polled; 409 if the id is taken.

    422 when a polled device's connection is unusable (for example an unknown device profile)
    or its host is outside ``allowed_networks``.
    """
    if services.registry.find(device.id) is not None:
        raise ConflictError(f"device {device.id!r} already exists")
    await check_target(device, services.settings.allowed_networks)
    adapter = services.adapters.prepare(device)
    device = await services.registry.add(device)
    services.adapters.start(device.id, adapter)
    await audit(services, caller, "device.create", device.id, "ok", device=_audited(device))
    return _view(device, services)


@router.get("/{device_id}/sessions")
async def device_sessions(
    device_id: str,
    services: ServicesDep,
    caller: Viewer,
    state: Annotated[SessionState | None, Query(description="Only running or ended ones.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, description="Only sessions numbered below this (paging).")
    ] = None,
) -> list[ChargingSession]:
    """A charger's charging sessions, newest first: id tag, start, stop, energy (kWh), duration.

    A running session's energy is the charger's import register at its latest reading minus
    the register at the start; 404 if the device is unknown.
    """
    services.registry.get(device_id)
    return await services.sessions.history(device_id, state=state, limit=limit, before=before)


@router.get("/{device_id}")
async def get_device(device_id: str, services: ServicesDep, caller: Viewer) -> DeviceView:
    """One device with its connection state and last-seen time; 404 if unknown."""
    return _view(services.registry.get(device_id), services)


@router.patch("/{device_id}")
async def update_device(
    device_id: str, patch: DevicePatch, services: ServicesDep, caller: Admin
) -> DeviceView:
    """Change some fields of a device (polling restarts with them); 404 if unknown."""
    changed = apply_patch(services.registry.get(device_id), patch)
    await check_target(changed, services.settings.allowed_networks)
    adapter = services.adapters.prepare(changed)
    await services.adapters.stop(device_id)
    device = await services.registry.update(device_id, patch)
    services.adapters.start(device_id, adapter)
    changes = patch.model_dump(mode="json", exclude_unset=True)
    await audit(services, caller, "device.update", device_id, "ok", changes=changes)
    return _view(device, services)


@router.delete("/{device_id}", status_code=204)
async def delete_device(
    device_id: str,
    services: ServicesDep,
    caller: Admin,
    purge_telemetry: Annotated[
        bool, Query(description="Also delete every stored reading of the device.")
    ] = False,
) -> Response:
    """Stop polling (or disconnect the charger) and remove a device (and optionally its
    telemetry); 404 if unknown."""
    services.registry.get(device_id)
    await services.adapters.stop(device_id)
    if services.ocpp is not None:
        await services.ocpp.disconnect(device_id, "device removed")
    await services.registry.remove(device_id)
    if purge_telemetry:
        await services.store.delete_device(device_id)
    await audit(services, caller, "device.delete", device_id, "ok", purge_telemetry=purge_telemetry)
    return Response(status_code=204)


def _audited(device: DERDevice) -> dict[str, object]:
    """What the audit log keeps of a device: its identity and where DERIM connects to."""
    return device.model_dump(mode="json", include={"id", "device_type", "connection"})
