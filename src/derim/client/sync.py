"""``DerimClient``: the REST API and the live stream (as Server-Sent Events), blocking."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx

from derim import __version__
from derim.adapters.ocpp.views import SiteView
from derim.api.views import CreatedKey, DeviceView, RejectPage, StoredForecastResponse
from derim.client import calls
from derim.client.calls import Call, Instant, TelemetryWindow
from derim.client.errors import DerimClientError, ServerUnreachableError, raise_for_status
from derim.client.models import TelemetryPage
from derim.client.stream import SseStream, stream_query
from derim.client.twin_models import (
    Anomaly,
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
DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"derim-client/{__version__}"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers presenting ``api_key`` (none without one)."""
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class DerimClient:
    """A blocking client of one DERIM server.

    ``base_url`` is the server (``http://host:8000``), ``api_key`` a key from ``derim keys
    create`` (sent as ``Authorization: Bearer``), ``timeout_s`` the limit on each request.
    ``transport`` replaces the network (httpx's ``MockTransport`` in tests). Errors are
    ``derim.client.errors``: ``ApiError`` subclasses by status, ``ServerUnreachableError``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = auth_headers(api_key)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout_s,
            transport=transport,
        )

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        """A client of ``$DERIM_URL`` (default http://127.0.0.1:8000) with ``$DERIM_API_KEY``."""
        url = os.environ.get("DERIM_URL", DEFAULT_URL)
        return cls(url, api_key=os.environ.get("DERIM_API_KEY") or None, **options)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.route.method, call.url, params=call.params, json=call.body
            )
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{self.base_url}: {exc!r}") from exc
        raise_for_status(response)
        return call.parse(response)

    # Health -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Version, storage state, spool depth and ingest counters (no key needed)."""
        return self._send(calls.health())

    def metrics(self) -> str:
        """The Prometheus text exposition of ``/metrics``."""
        return self._send(calls.metrics())

    # Devices ------------------------------------------------------------------------------

    def list_devices(
        self, *, device_type: DeviceType | str | None = None, group: str | None = None
    ) -> list[DeviceView]:
        """Every registered device with its connection status, optionally filtered."""
        return self._send(calls.list_devices(device_type, group))

    def get_device(self, device_id: str) -> DeviceView:
        """One device; ``ResourceNotFoundError`` if unknown."""
        return self._send(calls.get_device(device_id))

    def create_device(self, device: DERDevice | Mapping[str, Any]) -> DeviceView:
        """Register a device (admin); ``RequestConflictError`` if the id is taken."""
        return self._send(calls.create_device(device))

    def update_device(self, device_id: str, patch: DevicePatch | Mapping[str, Any]) -> DeviceView:
        """Change some fields of a device (admin); polling restarts with them."""
        return self._send(calls.update_device(device_id, patch))

    def delete_device(self, device_id: str, *, purge_telemetry: bool = False) -> None:
        """Remove a device (admin), and with ``purge_telemetry`` its stored readings."""
        self._send(calls.delete_device(device_id, purge_telemetry))

    def device_sessions(
        self,
        device_id: str,
        *,
        state: SessionState | str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[ChargingSession]:
        """A charger's charging sessions, newest first (``before``: a session number)."""
        return self._send(calls.device_sessions(device_id, state, limit, before))

    def device_commands(
        self, device_id: str, *, limit: int | None = None, before: Instant | None = None
    ) -> list[CommandResult]:
        """A device's command records, newest first."""
        return self._send(calls.device_commands(device_id, limit, before))

    # Telemetry ----------------------------------------------------------------------------

    def ingest(self, readings: Iterable[DERTelemetry | Mapping[str, Any]]) -> int:
        """Store readings (operator); returns how many were accepted once stored or spooled.
        Each needs ``device_id`` and ``timestamp``; fields in canonical units."""
        return self._send(calls.ingest(readings))

    def telemetry(
        self,
        device_id: str,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        fields: Sequence[str] | None = None,
        every: Interval | str | None = None,
        agg: Aggregation | str | None = None,
        order: Order | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TelemetryPage:
        """One page of readings in ``[start, end)`` (default: the last 24 h), raw or
        downsampled to ``every`` (1m, 15m, 1h, 1d) with ``agg`` (mean, min, max, last, sum).
        Pass the page's ``next_cursor`` as ``cursor`` for the next page, or use
        ``iter_telemetry``."""
        window = TelemetryWindow(start, end, fields, every, agg, order)
        return self._send(calls.telemetry(device_id, window, limit, cursor))

    def iter_telemetry(
        self,
        device_id: str,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        fields: Sequence[str] | None = None,
        every: Interval | str | None = None,
        agg: Aggregation | str | None = None,
        order: Order | str | None = None,
        page_size: int = 10_000,
    ) -> Iterator[dict[str, Any]]:
        """Every reading in the window, page after page (``page_size`` rows per request)."""
        window = TelemetryWindow(start, end, fields, every, agg, order)
        cursor: str | None = None
        while True:
            page = self._send(calls.telemetry(device_id, window, page_size, cursor))
            yield from page.records
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def telemetry_csv(
        self,
        device_id: str,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        fields: Sequence[str] | None = None,
        every: Interval | str | None = None,
        agg: Aggregation | str | None = None,
        limit: int | None = None,
    ) -> str:
        """One page of readings as CSV text (header: timestamp and the fields)."""
        window = TelemetryWindow(start, end, fields, every, agg)
        return self._send(calls.telemetry_csv(device_id, window, limit))

    def latest(self, device_id: str) -> dict[str, Any]:
        """The newest stored reading; ``ResourceNotFoundError`` if none."""
        return self._send(calls.latest(device_id))

    def rejects(self, *, limit: int | None = None, before: int | None = None) -> RejectPage:
        """Inputs that could not become readings (the dead-letter store), newest first."""
        return self._send(calls.rejects(limit, before))

    def fleet_summary(self, *, stale_after_s: float | None = None) -> dict[str, Any]:
        """Current power (kW, grid-positive) summed by device type and by group."""
        return self._send(calls.fleet_summary(stale_after_s))

    # Control ------------------------------------------------------------------------------

    def send_command(
        self, device_id: str, request: CommandRequest | Mapping[str, Any]
    ) -> CommandResult:
        """Send a command (operator) and return its record: ``acknowledged``, ``rejected``,
        ``failed``, or ``sent`` when the device has not answered yet (see
        ``wait_for_command``). Invalid commands raise ``BadRequestError``, nothing sent."""
        return self._send(calls.send_command(device_id, request))

    def get_command(self, command_id: str) -> CommandResult:
        """One command's record."""
        return self._send(calls.get_command(command_id))

    def wait_for_command(
        self, command_id: str, *, timeout_s: float = 30.0, poll_s: float = 0.5
    ) -> CommandResult:
        """The command's record once final; ``DerimClientError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (record := self.get_command(command_id)).is_final:
            if time.monotonic() > deadline:
                message = f"command {command_id} still {record.status} after {timeout_s:g} s"
                raise DerimClientError(message)
            time.sleep(poll_s)
        return record

    def create_schedule(self, request: ScheduleRequest | Mapping[str, Any]) -> Schedule:
        """Create a schedule of setpoints for a device or a group (operator)."""
        return self._send(calls.create_schedule(request))

    def list_schedules(self, *, limit: int | None = None) -> list[Schedule]:
        """Schedules, newest first."""
        return self._send(calls.list_schedules(limit))

    def get_schedule(self, schedule_id: str) -> Schedule:
        """One schedule with each entry's state and the commands it sent."""
        return self._send(calls.get_schedule(schedule_id))

    def cancel_schedule(self, schedule_id: str) -> Schedule:
        """Cancel a schedule's entries not yet sent (operator)."""
        return self._send(calls.cancel_schedule(schedule_id))

    def list_sites(self) -> list[SiteView]:
        """Every site (charger group) with a power limit and its current split."""
        return self._send(calls.list_sites())

    def get_site(self, site: str) -> SiteView:
        """A site's limit (kW, None when unset) and each session's share."""
        return self._send(calls.get_site(site))

    def set_site_limit(self, site: str, limit_kw: float) -> SiteView:
        """Limit a site's chargers to ``limit_kw`` together (operator)."""
        return self._send(calls.set_site_limit(site, limit_kw))

    def clear_site_limit(self, site: str) -> SiteView:
        """Remove a site's limit (operator)."""
        return self._send(calls.clear_site_limit(site))

    # Twin ---------------------------------------------------------------------------------

    def forecast(
        self,
        device_id: str,
        *,
        horizon: str = "24h",
        model: str | None = None,
        field: str = "power_kw",
    ) -> ForecastResponse:
        """A forecast from now with P10/P50/P90; ``ResourceNotFoundError`` until trained."""
        return self._send(calls.forecast(device_id, horizon, model, field))

    def stored_forecast(self, device_id: str) -> StoredForecastResponse:
        """The power forecast (kW) last issued and stored for the device;
        ``ResourceNotFoundError`` when it has none."""
        return self._send(calls.stored_forecast(device_id))

    def train(
        self, device_id: str, request: TrainRequest | Mapping[str, Any] | None = None
    ) -> TrainingJob:
        """Start backtesting and training forecasters in the background (operator)."""
        return self._send(calls.train(device_id, request))

    def training_job(self, job_id: str) -> TrainingJob:
        """A training job's state and, when done, its models and backtest."""
        return self._send(calls.training_job(job_id))

    def wait_for_training(
        self, job_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.5
    ) -> TrainingJob:
        """The training job once finished (succeeded or failed); ``DerimClientError`` after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (job := self.training_job(job_id)).state == "running":
            if time.monotonic() > deadline:
                raise DerimClientError(f"training job {job_id} still running after {timeout_s:g} s")
            time.sleep(poll_s)
        return job

    def models(self, device_id: str, *, field: str = "power_kw") -> ModelsResponse:
        """The stored models of a device's field and the one served by default."""
        return self._send(calls.models(device_id, field))

    def anomalies(
        self,
        device_id: str,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        field: str = "power_kw",
    ) -> list[Anomaly]:
        """Scan ``[start, end)`` (default: the last day) and return the anomalies in it."""
        return self._send(calls.anomalies(device_id, start, end, field))

    def simulate(self, scenario: Scenario | Mapping[str, Any]) -> SimulationResult:
        """A what-if on given series: PV, curtailment, battery and EV changes."""
        return self._send(calls.simulate(scenario))

    def what_if(
        self,
        load_device_id: str,
        *,
        pv_device_id: str | None = None,
        horizon: str = "24h",
        changes: Mapping[str, Any] | None = None,
    ) -> SimulationResult:
        """A what-if on the devices' served forecasts; ``changes`` are other ``Scenario``
        fields (pv_scale, curtail_pct, battery, ev, site_cap_kw, ...)."""
        return self._send(calls.what_if(load_device_id, pv_device_id, horizon, changes or {}))

    def dispatch(
        self,
        device_id: str,
        scenario: Scenario | Mapping[str, Any],
        *,
        send: bool = False,
        name: str = "twin dispatch",
    ) -> DispatchResponse:
        """Simulate a battery strategy and the schedule it makes; ``send`` creates it."""
        return self._send(calls.dispatch(device_id, scenario, send, name))

    # Admin --------------------------------------------------------------------------------

    def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI description of the live stream."""
        return self._send(calls.asyncapi())

    def list_keys(self) -> list[ApiKey]:
        """Every API key, revoked ones included, never a secret (admin)."""
        return self._send(calls.list_keys())

    def create_key(self, name: str, role: Role | str) -> CreatedKey:
        """A new key; its ``token`` is in this answer only (admin)."""
        return self._send(calls.create_key(name, role))

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key at once (admin)."""
        return self._send(calls.revoke_key(key_id))

    def audit_log(
        self,
        *,
        limit: int | None = None,
        before: int | None = None,
        target: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Who did what, when, to what, and how it ended, newest first (admin)."""
        return self._send(calls.audit_log(limit, before, target, action))

    # Stream -------------------------------------------------------------------------------

    def stream(
        self,
        *,
        devices: Sequence[str] = (),
        types: Sequence[DeviceType | str] = (),
        groups: Sequence[str] = (),
        fields: Sequence[str] = (),
        events: bool = True,
    ) -> SseStream:
        """Live telemetry and events as Server-Sent Events. Empty filters mean everything;
        ``events=False`` for telemetry only. ``hello`` holds the filter the server applies.

        ``with client.stream(devices=["pv-1"]) as stream: for message in stream: ...``
        """
        return SseStream(self._http, stream_query(devices, types, groups, fields, events))
