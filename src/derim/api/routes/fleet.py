"""``/api/v1/fleet``: fleet-wide views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from derim.api.auth import Viewer
from derim.api.deps import get_services
from derim.services import Services

router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])
ServicesDep = Annotated[Services, Depends(get_services)]
MAX_STALE_AFTER_S = 10 * 365.25 * 86400
"""Ten years, well past any useful window: an unbounded value could take ``now -
stale_after_s`` before year 1, out of the range of a datetime."""


def _bucket() -> dict[str, Any]:
    return {"devices": 0, "reporting": 0, "power_kw": 0.0}


@router.get("/summary")
async def fleet_summary(
    services: ServicesDep,
    caller: Viewer,
    stale_after_s: Annotated[
        float,
        Query(
            gt=0,
            le=MAX_STALE_AFTER_S,
            description="Readings older than this (s, at most ten years) do not count as current.",
        ),
    ] = 900,
) -> dict[str, Any]:
    """Current power (kW, grid-positive) summed by device type and by group.

    A device is *reporting* when its latest reading is newer than ``stale_after_s``; only
    reporting devices contribute power.
    """
    devices = services.registry.list()
    latest = await services.store.latest([d.id for d in devices])
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=stale_after_s)
    total = _bucket()
    by_type: dict[str, dict[str, Any]] = {}
    by_group: dict[str, dict[str, Any]] = {}
    for device in devices:
        buckets = [total, by_type.setdefault(device.device_type.value, _bucket())]
        buckets += [by_group.setdefault(g, _bucket()) for g in device.groups]
        reading = latest.get(device.id, {})
        measured_at = reading.get("timestamp")
        fresh = isinstance(measured_at, datetime) and measured_at >= cutoff
        power = reading.get("power_kw") if fresh else None
        for bucket in buckets:
            bucket["devices"] += 1
            if fresh:
                bucket["reporting"] += 1
            if isinstance(power, float | int):
                bucket["power_kw"] += power
    return {"as_of": now, **total, "by_type": by_type, "by_group": by_group}
