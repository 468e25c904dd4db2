"""``/api/v1/forecast`` and ``/api/v1/twin``: served and stored forecasts, training, anomalies,
what-if.

The routes declare their bodies with the twin's light API models; the numeric modules (pandas,
NumPy, SciPy) are imported by the handlers, on the first request that needs them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from derim.api.auth import Operator, Viewer, audit
from derim.api.deps import get_services
from derim.api.routes.schedules import create_schedule
from derim.api.views import (
    DispatchResponse,
    ForecastPoint,
    ForecastResponse,
    ModelsResponse,
    StoredForecastResponse,
)
from derim.errors import InvalidRequestError, NotFoundError, TwinError
from derim.services import Services
from derim.twin.anomaly_model import Anomaly
from derim.twin.scenario import Scenario, SimulationResult
from derim.twin.service import TrainingJob, TrainRequest

if TYPE_CHECKING:
    import pandas as pd

router = APIRouter(tags=["twin"])
ServicesDep = Annotated[Services, Depends(get_services)]
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
"""Anomaly windows must lie within these (the storage's epoch-millisecond range, with room)."""
FieldQuery = Annotated[str, Query(pattern=r"^[a-z0-9_]{1,64}$", description="Telemetry field.")]


class WhatIfRequest(BaseModel):
    """A what-if on served forecasts: which devices, how far ahead, and the scenario changes."""

    model_config = ConfigDict(extra="forbid")

    load_device_id: str
    pv_device_id: str | None = None
    horizon: str = "24h"
    changes: dict[str, Any] = Field(
        default_factory=dict,
        description="Other Scenario fields: pv_scale, curtail_pct, battery, ev, site_cap_kw, ...",
    )


class DispatchRequest(BaseModel):
    """A battery dispatch to simulate and, with ``send``, to schedule on ``device_id``."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    scenario: Scenario
    send: bool = False
    name: str = Field("twin dispatch", max_length=128)


@router.get("/api/v1/forecast/{device_id}")
async def get_forecast(
    device_id: str,
    services: ServicesDep,
    caller: Viewer,
    horizon: Annotated[str, Query(description="How far ahead, 15min to 168h.")] = "24h",
    model: Annotated[str | None, Query(description="Default: chosen by backtest.")] = None,
    field: FieldQuery = "power_kw",
) -> ForecastResponse:
    """Forecast a device's field from now with P10/P50/P90; 404 until a model is trained."""
    from derim.twin.timeseries import duration_text

    ahead = _duration(horizon, "horizon")
    forecast, info = await services.twin.forecast(device_id, field, ahead, model)
    points = [
        ForecastPoint(timestamp=t.to_pydatetime(), p10=lo, p50=mid, p90=hi)
        for t, lo, mid, hi in zip(
            forecast.index,
            forecast.p10.tolist(),
            forecast.p50.tolist(),
            forecast.p90.tolist(),
            strict=True,
        )
    ]
    return ForecastResponse(
        device_id=device_id,
        field=field,
        model=info.model,
        version=info.version,
        trained_at=info.trained_at,
        freq=info.freq,
        horizon=duration_text(ahead),
        points=points,
    )


@router.get("/api/v1/forecast/{device_id}/stored")
async def get_stored_forecast(
    device_id: str, services: ServicesDep, caller: Viewer
) -> StoredForecastResponse:
    """The power forecast (kW) last issued and stored for the device; 404 when it has none."""
    services.registry.get(device_id)
    stored = await services.store.latest_forecast(device_id)
    if stored is None:
        raise NotFoundError(
            "stored forecast",
            f"{device_id} (none issued yet; train a model: POST /api/v1/twin/{device_id}/train)",
        )
    points = [
        ForecastPoint(timestamp=p.time, p10=p.p10, p50=p.p50, p90=p.p90) for p in stored.points
    ]
    return StoredForecastResponse(
        device_id=device_id, model=stored.model, issued_at=stored.issued_at, points=points
    )


@router.post("/api/v1/twin/{device_id}/train", status_code=202)
async def start_training(
    device_id: str, body: TrainRequest, services: ServicesDep, caller: Operator
) -> TrainingJob:
    """Backtest and train forecasters on the device's stored history in the background."""
    job = await services.twin.start_training(device_id, body)
    await audit(services, caller, "twin.train", device_id, "ok", job_id=job.job_id)
    return job


@router.get("/api/v1/twin/jobs/{job_id}")
async def get_training_job(job_id: str, services: ServicesDep, caller: Viewer) -> TrainingJob:
    """A training job's state and, when done, the stored models and their backtest."""
    return services.twin.job(job_id)


@router.get("/api/v1/twin/{device_id}/models")
async def list_models(
    device_id: str, services: ServicesDep, caller: Viewer, field: FieldQuery = "power_kw"
) -> ModelsResponse:
    """The latest version of each stored model and the one served by default."""
    services.registry.get(device_id)
    models = services.twin.models
    return ModelsResponse(
        selected=models.selected(device_id, field), models=models.infos(device_id, field)
    )


@router.get("/api/v1/twin/{device_id}/anomalies")
async def list_anomalies(
    device_id: str,
    services: ServicesDep,
    caller: Viewer,
    start: AwareDatetime | None = None,
    end: AwareDatetime | None = None,
    field: FieldQuery = "power_kw",
) -> list[Anomaly]:
    """Scan [start, end) (default: the last day) and return every anomaly stored in it."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not EARLIEST <= value <= LATEST:
            raise InvalidRequestError(name, f"must lie between {EARLIEST:%Y} and {LATEST:%Y}")
    until = end or datetime.now(UTC)
    since = start or until - timedelta(days=1)
    if until <= since:
        raise InvalidRequestError("end", "must be after start")
    return await services.twin.anomalies(device_id, field, since, until)


@router.post("/api/v1/twin/simulate")
async def run_simulation(body: Scenario, caller: Viewer) -> SimulationResult:
    """What-if on given series: PV, curtailment, battery and EV changes; net load and SoC."""
    from derim.twin.simulate import simulate

    return await asyncio.to_thread(simulate, body)


@router.post("/api/v1/twin/whatif")
async def run_what_if(
    body: WhatIfRequest, services: ServicesDep, caller: Viewer
) -> SimulationResult:
    """What-if on the devices' served forecasts: the load device's consumption (the negated
    ``power_kw`` of a meter, as delivered-to-grid is positive) and the PV device's output."""
    from derim.twin.base import Forecast
    from derim.twin.simulate import scenario_from_forecasts, simulate

    horizon = _duration(body.horizon, "horizon")
    load, _ = await services.twin.forecast(body.load_device_id, "power_kw", horizon, None)
    pv = None
    if body.pv_device_id is not None:
        pv, _ = await services.twin.forecast(body.pv_device_id, "power_kw", horizon, None)
    consumption = Forecast(load.model, load.index, -load.p90, -load.p50, -load.p10)
    try:
        scenario = scenario_from_forecasts(consumption, pv, **body.changes)
    except ValidationError as exc:
        raise InvalidRequestError("changes", _first_error(exc)) from exc
    return await asyncio.to_thread(simulate, scenario)


@router.post("/api/v1/twin/dispatch")
async def dispatch_battery(
    body: DispatchRequest, services: ServicesDep, caller: Operator
) -> DispatchResponse:
    """Simulate the scenario's battery strategy (e.g. ``optimise``) and turn its power into a
    schedule for ``device_id``; with ``send`` the schedule is created like POST /schedules."""
    from derim.twin.dispatch import to_schedule_request
    from derim.twin.simulate import simulate

    if body.scenario.battery is None:
        raise InvalidRequestError("scenario.battery", "a dispatch needs a battery")
    services.registry.get(body.device_id)
    result = await asyncio.to_thread(simulate, body.scenario)
    request = to_schedule_request(
        body.device_id,
        body.scenario.start,
        body.scenario.step,
        result.battery_kw,
        name=body.name,
    )
    if not body.send:
        return DispatchResponse(result=result, schedule=request, schedule_id=None)
    schedule = await create_schedule(request, services, caller)
    return DispatchResponse(result=result, schedule=request, schedule_id=schedule.schedule_id)


def _first_error(exc: ValidationError) -> str:
    """The first problem of a validation error as ``field: message``."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _duration(text: str, name: str) -> pd.Timedelta:
    """A duration parameter of at most 168 h; 422 naming it when it is not one."""
    from derim.twin.timeseries import MAX_HORIZON, parse_duration

    try:
        value = parse_duration(text, name)
    except TwinError as exc:
        raise InvalidRequestError(name, str(exc)) from exc
    if value > MAX_HORIZON:
        raise InvalidRequestError(name, f"{text!r} is longer than the maximum of {MAX_HORIZON}")
    return value
