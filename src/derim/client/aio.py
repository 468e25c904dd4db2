"""``AsyncDerimClient``: the REST API and the live stream (as a WebSocket), for asyncio."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx

from derim.adapters.ocpp.views import SiteView
from derim.api.views import CreatedKey, DeviceView, RejectPage, StoredForecastResponse
from derim.client import calls
from derim.client.calls import Call, Instant, TelemetryWindow
from derim.client.errors import DerimClientError, ServerUnreachableError, raise_for_status
from derim.client.models import TelemetryPage
from derim.client.stream import WebSocketStream, stream_query
from derim.client.sync import DEFAULT_URL, auth_headers
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


class AsyncDerimClient:
    """An asyncio client of one DERIM server; the same methods as ``DerimClient``, awaited.

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = auth_headers(api_key)
        self._http = httpx.AsyncClient(
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.route.method, call.url, params=call.params, json=call.body
            )
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{self.base_url}: {exc!r}") from exc
        raise_for_status(response)
        return call.parse(response)

    # Health -------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Version, storage state, spool depth and ingest counters (no key needed)."""
        return await self._send(calls.health())

    async def metrics(self) -> str:
        """The Prometheus text exposition of ``/metrics``."""
        return await self._send(calls.metrics())

    # Devices ------------------------------------------------------------------------------

    async def list_devices(
        self, *, device_type: DeviceType | str | None = None, group: str | None = None
    ) -> list[DeviceView]:
        """Every registered device with its connection status, optionally filtered."""
        return await self._send(calls.list_devices(device_type, group))

    async def get_device(self, device_id: str) -> DeviceView:
        """One device; ``ResourceNotFoundError`` if unknown."""
        return await self._send(calls.get_device(device_id))

    async def create_device(self, device: DERDevice | Mapping[str, Any]) -> DeviceView:
        """Register a device (admin); ``RequestConflictError`` if the id is taken."""
        return await self._send(calls.create_device(device))

    async def update_device(
        self, device_id: str, patch: DevicePatch | Mapping[str, Any]
    ) -> DeviceView:
        """Change some fields of a device (admin); polling restarts with them."""
        return await self._send(calls.update_device(device_id, patch))

    async def delete_device(self, device_id: str, *, purge_telemetry: bool = False) -> None:
        """Remove a device (admin), and with ``purge_telemetry`` its stored readings."""
        await self._send(calls.delete_device(device_id, purge_telemetry))

    async def device_sessions(
        self,
        device_id: str,
        *,
        state: SessionState | str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[ChargingSession]:
        """A charger's charging sessions, newest first (``before``: a session number)."""
        return await self._send(calls.device_sessions(device_id, state, limit, before))

    async def device_commands(
        self, device_id: str, *, limit: int | None = None, before: Instant | None = None
    ) -> list[CommandResult]:
        """A device's command records, newest first."""
        return await self._send(calls.device_commands(device_id, limit, before))

    # Telemetry ----------------------------------------------------------------------------

    async def ingest(self, readings: Iterable[DERTelemetry | Mapping[str, Any]]) -> int:
        """Store readings (operator); returns how many were accepted once stored or spooled.
        Each needs ``device_id`` and ``timestamp``; fields in canonical units."""
        return await self._send(calls.ingest(readings))

    async def telemetry(
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
        return await self._send(calls.telemetry(device_id, window, limit, cursor))

    async def iter_telemetry(
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
    ) -> AsyncIterator[dict[str, Any]]:
        """Every reading in the window, page after page (``page_size`` rows per request)."""
        window = TelemetryWindow(start, end, fields, every, agg, order)
        cursor: str | None = None
        while True:
            page = await self._send(calls.telemetry(device_id, window, page_size, cursor))
            for record in page.records:
                yield record
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def telemetry_csv(
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
        return await self._send(calls.telemetry_csv(device_id, window, limit))

    async def latest(self, device_id: str) -> dict[str, Any]:
        """The newest stored reading; ``ResourceNotFoundError`` if none."""
        return await self._send(calls.latest(device_id))

    async def rejects(self, *, limit: int | None = None, before: int | None = None) -> RejectPage:
        """Inputs that could not become readings (the dead-letter store), newest first."""
        return await self._send(calls.rejects(limit, before))

    async def fleet_summary(self, *, stale_after_s: float | None = None) -> dict[str, Any]:
        """Current power (kW, grid-positive) summed by device type and by group."""
        return await self._send(calls.fleet_summary(stale_after_s))

    # Control ------------------------------------------------------------------------------

    async def send_command(
        self, device_id: str, request: CommandRequest | Mapping[str, Any]
    ) -> CommandResult:
        """Send a command (operator) and return its record: ``acknowledged``, ``rejected``,
        ``failed``, or ``sent`` when the device has not answered yet (see
        ``wait_for_command``). Invalid commands raise ``BadRequestError``, nothing sent."""
        return await self._send(calls.send_command(device_id, request))

    async def get_command(self, command_id: str) -> CommandResult:
        """One command's record."""
        return await self._send(calls.get_command(command_id))

    async def wait_for_command(
        self, command_id: str, *, timeout_s: float = 30.0, poll_s: float = 0.5
    ) -> CommandResult:
        """The command's record once final; ``DerimClientError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (record := await self.get_command(command_id)).is_final:
            if time.monotonic() > deadline:
                message = f"command {command_id} still {record.status} after {timeout_s:g} s"
                raise DerimClientError(message)
            await asyncio.sleep(poll_s)
        return record

    async def create_schedule(self, request: ScheduleRequest | Mapping[str, Any]) -> Schedule:
        """Create a schedule of setpoints for a device or a group (operator)."""
        return await self._send(calls.create_schedule(request))

    async def list_schedules(self, *, limit: int | None = None) -> list[Schedule]:
        """Schedules, newest first."""
        return await self._send(calls.list_schedules(limit))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """One schedule with each entry's state and the commands it sent."""
        return await self._send(calls.get_schedule(schedule_id))

    async def cancel_schedule(self, schedule_id: str) -> Schedule:
        """Cancel a schedule's entries not yet sent (operator)."""
        return await self._send(calls.cancel_schedule(schedule_id))

    async def list_sites(self) -> list[SiteView]:
        """Every site (charger group) with a power limit and its current split."""
        return await self._send(calls.list_sites())

    async def get_site(self, site: str) -> SiteView:
        """A site's limit (kW, None when unset) and each session's share."""
        return await self._send(calls.get_site(site))

    async def set_site_limit(self, site: str, limit_kw: float) -> SiteView:
        """Limit a site's chargers to ``limit_kw`` together (operator)."""
        return await self._send(calls.set_site_limit(site, limit_kw))

    async def clear_site_limit(self, site: str) -> SiteView:
        """Remove a site's limit (operator)."""
        return await self._send(calls.clear_site_limit(site))

    # Twin ---------------------------------------------------------------------------------

    async def forecast(
        self,
        device_id: str,
        *,
        horizon: str = "24h",
        model: str | None = None,
        field: str = "power_kw",
    ) -> ForecastResponse:
        """A forecast from now with P10/P50/P90; ``ResourceNotFoundError`` until trained."""
        return await self._send(calls.forecast(device_id, horizon, model, field))

    async def stored_forecast(self, device_id: str) -> StoredForecastResponse:
        """The power forecast (kW) last issued and stored for the device;
        ``ResourceNotFoundError`` when it has none."""
        return await self._send(calls.stored_forecast(device_id))

    async def train(
        self, device_id: str, request: TrainRequest | Mapping[str, Any] | None = None
    ) -> TrainingJob:
        """Start backtesting and training forecasters in the background (operator)."""
        return await self._send(calls.train(device_id, request))

    async def training_job(self, job_id: str) -> TrainingJob:
        """A training job's state and, when done, its models and backtest."""
        return await self._send(calls.training_job(job_id))

    async def wait_for_training(
        self, job_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.5
    ) -> TrainingJob:
        """The training job once finished (succeeded or failed); ``DerimClientError`` after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (job := await self.training_job(job_id)).state == "running":
            if time.monotonic() > deadline:
                raise DerimClientError(f"training job {job_id} still running after {timeout_s:g} s")
            await asyncio.sleep(poll_s)
        return job

    async def models(self, device_id: str, *, field: str = "power_kw") -> ModelsResponse:
        """The stored models of a device's field and the one served by default."""
        return await self._send(calls.models(device_id, field))

    async def anomalies(
        self,
        device_id: str,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        field: str = "power_kw",
    ) -> list[Anomaly]:
        """Scan ``[start, end)`` (default: the last day) and return the anomalies in it."""
        return await self._send(calls.anomalies(device_id, start, end, field))

    async def simulate(self, scenario: Scenario | Mapping[str, Any]) -> SimulationResult:
        """A what-if on given series: PV, curtailment, battery and EV changes."""
        return await self._send(calls.simulate(scenario))

    async def what_if(
        self,
        load_device_id: str,
        *,
        pv_device_id: str | None = None,
        horizon: str = "24h",
        changes: Mapping[str, Any] | None = None,
    ) -> SimulationResult:
        """A what-if on the devices' served forecasts; ``changes`` are other ``Scenario``
        fields (pv_scale, curtail_pct, battery, ev, site_cap_kw, ...)."""
        return await self._send(calls.what_if(load_device_id, pv_device_id, horizon, changes or {}))

    async def dispatch(
        self,
        device_id: str,
        scenario: Scenario | Mapping[str, Any],
        *,
        send: bool = False,
        name: str = "twin dispatch",
    ) -> DispatchResponse:
        """Simulate a battery strategy and the schedule it makes; ``send`` creates it."""
        return await self._send(calls.dispatch(device_id, scenario, send, name))

    # Admin --------------------------------------------------------------------------------

    async def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI description of the live stream."""
        return await self._send(calls.asyncapi())

    async def list_keys(self) -> list[ApiKey]:
        """Every API key, revoked ones included, never a secret (admin)."""
        return await self._send(calls.list_keys())

    async def create_key(self, name: str, role: Role | str) -> CreatedKey:
        """A new key; its ``token`` is in this answer only (admin)."""
        return await self._send(calls.create_key(name, role))

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key at once (admin)."""
        return await self._send(calls.revoke_key(key_id))

    async def audit_log(
        self,
        *,
        limit: int | None = None,
        before: int | None = None,
        target: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Who did what, when, to what, and how it ended, newest first (admin)."""
        return await self._send(calls.audit_log(limit, before, target, action))

    # Stream -------------------------------------------------------------------------------

    def stream(
        self,
        *,
        devices: Sequence[str] = (),
        types: Sequence[DeviceType | str] = (),
        groups: Sequence[str] = (),
        fields: Sequence[str] = (),
        events: bool = True,
    ) -> WebSocketStream:
        """Live telemetry and events over a WebSocket. Empty filters mean everything;
        ``events=False`` for telemetry only. ``hello`` holds the filter the server applies.

        ``async with client.stream(devices=["pv-1"]) as stream: async for message in stream:``
        """
        query = stream_query(devices, types, groups, fields, events)
        timeout_s = self._http.timeout.connect or 30.0
        return WebSocketStream(self.base_url, query, self._headers, timeout_s)
