"""``/api/v1/devices``: the device registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from derim.api.deps import get_services
from derim.models.common import DeviceType
from derim.models.device import DERDevice, DevicePatch
from derim.services import Services

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("")
async def list_devices(
    services: ServicesDep,
    device_type: Annotated[DeviceType | None, Query(description="Only this type.")] = None,
    group: Annotated[str | None, Query(description="Only members of this group.")] = None,
) -> list[DERDevice]:
    """Every registered device, optionally filtered by type and group."""
    return [
        d
        for d in services.registry.list()
        if (device_type is None or d.device_type == device_type)
        and (group is None or group in d.groups)
    ]


@router.post("", status_code=201)
async def create_device(device: DERDevice, services: ServicesDep) -> DERDevice:
    """Register a device; 409 if the id is taken."""
    return await services.registry.add(device)


@router.get("/{device_id}")
async def get_device(device_id: str, services: ServicesDep) -> DERDevice:
    """One device; 404 if unknown."""
    return services.registry.get(device_id)


@router.patch("/{device_id}")
async def update_device(device_id: str, patch: DevicePatch, services: ServicesDep) -> DERDevice:
    """Change some fields of a device; 404 if unknown."""
    return await services.registry.update(device_id, patch)


@router.delete("/{device_id}", status_code=204)
async def delete_device(
    device_id: str,
    services: ServicesDep,
    purge_telemetry: Annotated[
        bool, Query(description="Also delete every stored reading of the device.")
    ] = False,
) -> Response:
    """Remove a device from the registry (and optionally its telemetry); 404 if unknown."""
    await services.registry.remove(device_id)
    if purge_telemetry:
        await services.store.delete_device(device_id)
    return Response(status_code=204)
