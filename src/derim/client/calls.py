"""Each API operation as a ``Call``: the route, its parameters and body, and how to read the
answer. The sync and async clients build calls here and differ only in how they send them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from derim.adapters.ocpp.views import SiteView
from derim.api.views import CreatedKey, DeviceView, RejectPage, StoredForecastResponse
from derim.client import routes
from derim.client.errors import UnexpectedResponseError
from derim.client.models import TelemetryPage
from derim.client.twin_models import (
    Anomaly,
    AnomalyList,
    DispatchResponse,
    ForecastResponse,
    ModelsResponse,
    Scenario,
    SimulationResult,
    TrainingJob,
    TrainRequest,
)
from derim.control.schedules import Schedule, ScheduleRequest
from derim.models.command import CommandRequest, CommandResult
from derim.models.common import DeviceType
from derim.models.device import DERDevice, DevicePatch
from derim.models.session import ChargingSession, SessionState
from derim.models.telemetry import DERTelemetry
from derim.security.audit import AuditEntry
from derim.security.keys import ApiKey, Role
from derim.storage.base import Aggregation, Interval, Order

T = TypeVar("T")
Instant = datetime | str
"""A time: an aware datetime, a naive one (read as UTC) or ISO 8601 text."""
Body = BaseModel | Mapping[str, Any]
"""A request body: the server's model, or a mapping the server validates."""
QueryValue = str | int | float | bool | datetime | Sequence[str] | None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    route: routes.Route
    parse: Callable[[httpx.Response], T]
    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, QueryValue] = field(default_factory=dict)
    body: Any = None
    """JSON-ready content, or None for no body."""

    def __post_init__(self) -> None:
        unknown = set(self.query) - set(self.route.query)
        if unknown:
            raise ValueError(f"{self.route.path} takes no query parameter {sorted(unknown)}")

    @property
    def url(self) -> str:
        """The path with its parameters filled in."""
        return self.route.url(self.path)

    @property
    def params(self) -> dict[str, str | list[str]]:
        """The query parameters to send: None left out, times as ISO 8601, booleans as
        ``true``/``false``."""
        sent: dict[str, str | list[str]] = {}
        for name, value in self.query.items():
            if value is None:
                continue
            if isinstance(value, bool):
                sent[name] = "true" if value else "false"
            elif isinstance(value, datetime):
                sent[name] = value.isoformat()
            elif isinstance(value, str | int | float):
                sent[name] = str(value)
            else:
                sent[name] = [str(item) for item in value]
        return sent


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def returning(kind: Any) -> Callable[[httpx.Response], Any]:
    """A parser of a JSON answer into ``kind`` (a model or ``list[model]``); fields the client
    does not know are ignored, so a newer server's additions do not break it."""

    def parse(response: httpx.Response) -> Any:
        try:
            return _adapter(kind).validate_json(response.content, extra="ignore")
        except ValidationError as exc:
            where = f"{response.request.method} {response.request.url.path}"
            raise UnexpectedResponseError(f"{where}: unreadable answer: {exc}") from exc

    return parse


def _text(response: httpx.Response) -> str:
    return response.text


def _nothing(response: httpx.Response) -> None:
    return None


_object = returning(dict[str, Any])


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data; models without the fields their caller left unset."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return to_jsonable_python(value)


def health() -> Call[dict[str, Any]]:
    return Call(routes.HEALTH, _object)


def metrics() -> Call[str]:
    return Call(routes.METRICS, _text)


def list_devices(device_type: DeviceType | str | None, group: str | None) -> Call[list[DeviceView]]:
    query = {"device_type": device_type, "group": group}
    return Call(routes.LIST_DEVICES, returning(list[DeviceView]), query=query)


def get_device(device_id: str) -> Call[DeviceView]:
    return Call(routes.GET_DEVICE, returning(DeviceView), {"device_id": device_id})


def create_device(device: DERDevice | Mapping[str, Any]) -> Call[DeviceView]:
    return Call(routes.CREATE_DEVICE, returning(DeviceView), body=jsonable(device))


def update_device(device_id: str, patch: DevicePatch | Mapping[str, Any]) -> Call[DeviceView]:
    path = {"device_id": device_id}
    return Call(routes.UPDATE_DEVICE, returning(DeviceView), path, body=jsonable(patch))


def delete_device(device_id: str, purge_telemetry: bool) -> Call[None]:
    query = {"purge_telemetry": purge_telemetry}
    return Call(routes.DELETE_DEVICE, _nothing, {"device_id": device_id}, query)


def device_sessions(
    device_id: str, state: SessionState | str | None, limit: int | None, before: int | None
) -> Call[list[ChargingSession]]:
    query = {"state": state, "limit": limit, "before": before}
    path = {"device_id": device_id}
    return Call(routes.DEVICE_SESSIONS, returning(list[ChargingSession]), path, query)


def device_commands(
    device_id: str, limit: int | None, before: Instant | None
) -> Call[list[CommandResult]]:
    path, query = {"device_id": device_id}, {"limit": limit, "before": before}
    return Call(routes.DEVICE_COMMANDS, returning(list[CommandResult]), path, query)


def ingest(readings: Iterable[DERTelemetry | Mapping[str, Any]]) -> Call[int]:
    def accepted(response: httpx.Response) -> int:
        return int(_object(response)["accepted"])

    return Call(routes.INGEST, accepted, body=[jsonable(reading) for reading in readings])


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """What to read of a device's telemetry (see ``DerimClient.telemetry``)."""

    start: Instant | None = None
    end: Instant | None = None
    fields: Sequence[str] | None = None
    every: Interval | str | None = None
    agg: Aggregation | str | None = None
    order: Order | str | None = None

    def query(self, limit: int | None, cursor: str | None) -> dict[str, QueryValue]:
        """The query parameters of one page."""
        return {
            "start": self.start,
            "end": self.end,
            "fields": ",".join(self.fields) if self.fields else None,
            "every": self.every,
            "agg": self.agg,
            "order": self.order,
            "limit": limit,
            "cursor": cursor,
        }


def telemetry(
    device_id: str, window: TelemetryWindow, limit: int | None, cursor: str | None
) -> Call[TelemetryPage]:
    path, query = {"device_id": device_id}, window.query(limit, cursor)
    return Call(routes.QUERY_TELEMETRY, returning(TelemetryPage), path, query)


def telemetry_csv(device_id: str, window: TelemetryWindow, limit: int | None) -> Call[str]:
    query = {**window.query(limit, None), "format": "csv"}
    return Call(routes.QUERY_TELEMETRY, _text, {"device_id": device_id}, query)


def latest(device_id: str) -> Call[dict[str, Any]]:
    return Call(routes.LATEST, _object, {"device_id": device_id})


def rejects(limit: int | None, before: int | None) -> Call[RejectPage]:
    query = {"limit": limit, "before": before}
    return Call(routes.REJECTS, returning(RejectPage), query=query)


def fleet_summary(stale_after_s: float | None) -> Call[dict[str, Any]]:
    return Call(routes.FLEET_SUMMARY, _object, query={"stale_after_s": stale_after_s})


def send_command(
    device_id: str, request: CommandRequest | Mapping[str, Any]
) -> Call[CommandResult]:
    path = {"device_id": device_id}
    return Call(routes.CONTROL, returning(CommandResult), path, body=jsonable(request))


def get_command(command_id: str) -> Call[CommandResult]:
    return Call(routes.GET_COMMAND, returning(CommandResult), {"command_id": str(command_id)})


def create_schedule(request: ScheduleRequest | Mapping[str, Any]) -> Call[Schedule]:
    return Call(routes.CREATE_SCHEDULE, returning(Schedule), body=jsonable(request))


def list_schedules(limit: int | None) -> Call[list[Schedule]]:
    return Call(routes.LIST_SCHEDULES, returning(list[Schedule]), query={"limit": limit})


def get_schedule(schedule_id: str) -> Call[Schedule]:
    return Call(routes.GET_SCHEDULE, returning(Schedule), {"schedule_id": str(schedule_id)})


def cancel_schedule(schedule_id: str) -> Call[Schedule]:
    return Call(routes.CANCEL_SCHEDULE, returning(Schedule), {"schedule_id": str(schedule_id)})


def list_sites() -> Call[list[SiteView]]:
    return Call(routes.LIST_SITES, returning(list[SiteView]))


def get_site(site: str) -> Call[SiteView]:
    return Call(routes.GET_SITE, returning(SiteView), {"site": site})


def set_site_limit(site: str, limit_kw: float) -> Call[SiteView]:
    body = {"limit_kw": limit_kw}
    return Call(routes.SET_SITE_LIMIT, returning(SiteView), {"site": site}, body=body)


def clear_site_limit(site: str) -> Call[SiteView]:
    return Call(routes.CLEAR_SITE_LIMIT, returning(SiteView), {"site": site})


def forecast(device_id: str, horizon: str, model: str | None, field: str) -> Call[ForecastResponse]:
    query = {"horizon": horizon, "model": model, "field": field}
    parse = returning(ForecastResponse)
    return Call(routes.FORECAST, parse, {"device_id": device_id}, query)


def stored_forecast(device_id: str) -> Call[StoredForecastResponse]:
    parse = returning(StoredForecastResponse)
    return Call(routes.STORED_FORECAST, parse, {"device_id": device_id})


def train(device_id: str, request: TrainRequest | Mapping[str, Any] | None) -> Call[TrainingJob]:
    path, body = {"device_id": device_id}, jsonable(request or {})
    return Call(routes.TRAIN, returning(TrainingJob), path, body=body)


def training_job(job_id: str) -> Call[TrainingJob]:
    return Call(routes.TRAINING_JOB, returning(TrainingJob), {"job_id": job_id})


def models(device_id: str, field: str) -> Call[ModelsResponse]:
    path, query = {"device_id": device_id}, {"field": field}
    return Call(routes.MODELS, returning(ModelsResponse), path, query)


def anomalies(
    device_id: str, start: Instant | None, end: Instant | None, field: str
) -> Call[list[Anomaly]]:
    path, query = {"device_id": device_id}, {"start": start, "end": end, "field": field}
    return Call(routes.ANOMALIES, returning(AnomalyList), path, query)


def simulate(scenario: Scenario | Mapping[str, Any]) -> Call[SimulationResult]:
    parse = returning(SimulationResult)
    return Call(routes.SIMULATE, parse, body=jsonable(scenario))


def what_if(
    load_device_id: str, pv_device_id: str | None, horizon: str, changes: Mapping[str, Any]
) -> Call[SimulationResult]:
    body = {"load_device_id": load_device_id, "pv_device_id": pv_device_id,
            "horizon": horizon, "changes": jsonable(changes)}  # fmt: skip
    return Call(routes.WHAT_IF, returning(SimulationResult), body=body)


def dispatch(
    device_id: str, scenario: Scenario | Mapping[str, Any], send: bool, name: str
) -> Call[DispatchResponse]:
    body = {"device_id": device_id, "scenario": jsonable(scenario), "send": send, "name": name}
    return Call(routes.DISPATCH, returning(DispatchResponse), body=body)


def asyncapi() -> Call[dict[str, Any]]:
    return Call(routes.ASYNCAPI, _object)


def list_keys() -> Call[list[ApiKey]]:
    return Call(routes.LIST_KEYS, returning(list[ApiKey]))


def create_key(name: str, role: Role | str) -> Call[CreatedKey]:
    body = {"name": name, "role": str(role)}
    return Call(routes.CREATE_KEY, returning(CreatedKey), body=body)


def revoke_key(key_id: str) -> Call[ApiKey]:
    return Call(routes.REVOKE_KEY, returning(ApiKey), {"key_id": key_id})


def audit_log(
    limit: int | None, before: int | None, target: str | None, action: str | None
) -> Call[list[AuditEntry]]:
    query = {"limit": limit, "before": before, "target": target, "action": action}
    return Call(routes.AUDIT, returning(list[AuditEntry]), query=query)
