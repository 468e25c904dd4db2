"""Wiring of the core: registry, store, spool, durable writer, ingest bus, dead letters, charging
sessions, the twin and the adapters (polled devices; the MQTT broker when ``mqtt_url`` is set;
the OCPP central system unless disabled), opened together. Devices' changes of connection state,
commands' results and new anomalies are published on the event hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from derim.adapters.base import ConnectionState, DeviceStatus
from derim.adapters.manager import AdapterManager
from derim.adapters.mqtt.adapter import MqttAdapter
from derim.adapters.mqtt.client import MqttClient
from derim.adapters.mqtt.mapping import load_mapping, shipped_mapping
from derim.adapters.ocpp.central import CentralSystem
from derim.adapters.ocpp.site import SiteBalancer
from derim.bus import IngestBus
from derim.bus.events import Event, EventHub, EventType
from derim.config import Settings
from derim.control.controller import Controller
from derim.control.schedules import Schedule, Scheduler
from derim.control.store import CommandStore
from derim.errors import ConfigError, DerimError, InvalidRequestError
from derim.grid.fleet import FleetAccess
from derim.grid.links import RunningLink, start_links
from derim.models.device import DERDevice
from derim.models.telemetry import DERTelemetry
from derim.security.audit import AuditLog
from derim.security.keys import KeyStore
from derim.security.ratelimit import RateLimiter
from derim.storage.anomalies import AnomalyStore
from derim.storage.base import Store
from derim.storage.durable import DurableWriter
from derim.storage.registry import DeviceRegistry
from derim.storage.rejects import RejectStore
from derim.storage.sessions import SessionStore
from derim.storage.spool import Spool
from derim.storage.sqlite import SQLiteStore
from derim.storage.sqlite_file import SQLiteFile
from derim.tasks import cancel_and_wait
from derim.twin.service import TwinService

log = logging.getLogger(__name__)
FileT = TypeVar("FileT", bound=SQLiteFile)

MAINTENANCE_INTERVAL_S = 30.0
STATE_EVENTS = {
    ConnectionState.ONLINE: EventType.DEVICE_ONLINE,
    ConnectionState.DEGRADED: EventType.DEVICE_DEGRADED,
    ConnectionState.OFFLINE: EventType.DEVICE_OFFLINE,
}


def build_store(settings: Settings) -> Store:
    """The telemetry backend the settings ask for."""
    if settings.storage_backend == "influxdb":
        from derim.storage.influx import InfluxStore

        password = settings.influxdb_password
        return InfluxStore(
            settings.influxdb_url,
            settings.influxdb_database,
            username=settings.influxdb_username,
            password=password.get_secret_value() if password else None,
            timeout_s=settings.influxdb_timeout_s,
            retention_days=settings.retention_days,
        )
    return SQLiteStore(settings.database_path, synchronous=settings.sqlite_synchronous)


@dataclass
class Services:
    """The running core that the API, the CLI and the adapters share."""

    settings: Settings
    registry: DeviceRegistry
    store: Store
    spool: Spool
    writer: DurableWriter
    bus: IngestBus
    adapters: AdapterManager
    rejects: RejectStore
    sessions: SessionStore
    controller: Controller
    keys: KeyStore
    audit: AuditLog
    rate_limiter: RateLimiter
    scheduler: Scheduler
    twin: TwinService
    events: EventHub = field(default_factory=EventHub)
    mqtt: MqttAdapter | None = None
    ocpp: CentralSystem | None = None
    sites: SiteBalancer | None = None
    grid_links: list[RunningLink] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    async def ingest(self, records: Sequence[DERTelemetry]) -> None:
        """Publish records and wait until they are stored or spooled."""
        await self.bus.publish(records, wait=True)

    def status_events(self) -> list[Event]:
        """Every followed device's current connection state, as events marked ``snapshot``."""
        events = []
        for device in self.registry.list():
            status = self.status(device)
            kind = None if status is None else STATE_EVENTS.get(status.state)
            if status is not None and kind is not None:
                last_seen = None if status.last_seen is None else status.last_seen.isoformat()
                data = {"snapshot": True, "reason": status.last_error, "last_seen": last_seen}
                events.append(Event(type=kind, device_id=device.id, data=data))
        return events

    def fleet_access(self) -> FleetAccess:
        """The control layer, registry and latest readings, for a grid-facing link."""
        return FleetAccess(self.controller.submit, self.registry.list, self.store.latest)

    def status(self, device: DERDevice) -> DeviceStatus | None:
        """The device's connection state, when an adapter follows it."""
        if device.protocol == "mqtt" and self.mqtt is not None:
            return self.mqtt.status(device.id)
        if device.protocol == "ocpp" and self.ocpp is not None:
            return self.ocpp.status(device.id)
        return self.adapters.status(device.id)


@contextlib.asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything, register the configured fleet, start polling; close in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        registry = DeviceRegistry(settings.database_path)
        await registry.open()
        stack.push_async_callback(registry.close)
        spool = Spool(settings.data_dir / "spool.db")
        await spool.open()
        stack.push_async_callback(spool.close)
        store = build_store(settings)
        try:
            await store.open()
        except DerimError as exc:
            log.warning("storage not reachable at start, spooling until it is: %s", exc)
        stack.push_async_callback(store.close)
        writer = DurableWriter(store, spool, retry_interval_s=settings.spool_retry_s)
        writer.start()
        stack.push_async_callback(writer.stop)
        bus = IngestBus(
            writer.write,
            max_batch=settings.ingest_max_batch,
            max_pending=settings.ingest_max_pending,
        )
        bus.start()
        stack.push_async_callback(bus.stop)
        events = EventHub()
        status_changed = partial(_status_event, events)
        adapters = AdapterManager(bus.publish, status_changed)
        stack.push_async_callback(adapters.aclose)
        for device in settings.devices:
            try:
                adapters.prepare(device)
            except InvalidRequestError as exc:
                raise ConfigError(f"devices: {device.id}: {exc}") from exc
            await registry.upsert(device)
        for device in registry.list():
            try:
                adapters.start(device.id, adapters.prepare(device))
            except DerimError as exc:
                log.error("device %s is not polled: %s", device.id, exc)
        rejects = await _opened(stack, RejectStore(settings.data_dir / "rejects.db"))
        sessions = SessionStore(settings.data_dir / "sessions.db")
        await sessions.open()
        stack.push_async_callback(sessions.close)
        commands = await _opened(stack, CommandStore(settings.data_dir / "commands.db"))
        controller = Controller(
            registry,
            commands,
            adapters,
            partial(_latest, store),
            wait_s=settings.control_wait_s,
            events=events.publish,
        )
        controller.start()
        stack.push_async_callback(controller.aclose)
        keys = await _opened(stack, KeyStore(settings.data_dir / "keys.db"))
        audit = await _opened(stack, AuditLog(settings.data_dir / "audit.db"))
        _warn_about_auth(settings, keys)
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        scheduler = Scheduler(
            controller.submit, partial(_members, registry), commands.save_schedule
        )
        scheduler.load(await commands.schedules(limit=10_000))
        anomalies = await _opened(stack, AnomalyStore(settings.data_dir / "anomalies.db"))
        twin = TwinService(
            settings.data_dir / "twin",
            registry,
            store,
            anomalies,
            settings.lstm_epochs,
            events=events.publish,
        )
        stack.push_async_callback(twin.close)
        services = Services(
            settings, registry, store, spool, writer, bus, adapters, rejects, sessions,
            controller, keys, audit, limiter, scheduler, twin, events=events,
        )  # fmt: skip
        if settings.ocpp_enabled:
            central = CentralSystem(settings, registry, sessions, rejects, services.ingest)
            central.status_changed = status_changed
            await central.start()
            stack.push_async_callback(central.aclose)
            services.ocpp = controller.ocpp = central
            services.sites = SiteBalancer(central)
            central.sessions_changed = services.sites.sessions_changed
            stack.push_async_callback(services.sites.aclose)
        if settings.mqtt_url is not None:
            services.mqtt = controller.mqtt = _mqtt_adapter(settings, registry, rejects)
            services.mqtt.status_changed = status_changed
            ingesting = asyncio.create_task(services.mqtt.run(services.ingest), name="derim-mqtt")
            stack.push_async_callback(cancel_and_wait, ingesting)
        scheduling = asyncio.create_task(scheduler.run(), name="derim-schedules")
        stack.push_async_callback(cancel_and_wait, scheduling)
        maintenance = asyncio.create_task(_maintain(services), name="derim-maintenance")
        stack.push_async_callback(cancel_and_wait, maintenance)
        services.grid_links = await start_links(settings, services.fleet_access(), stack)
        scan_last_day = partial(twin.scan_all, timedelta(days=1))
        periodic: dict[str, tuple[float | None, Callable[[], Awaitable[object]]]] = {
            "anomaly-scan": (settings.anomaly_scan_interval_s, scan_last_day),
            "forecast-refresh": (settings.forecast_refresh_interval_s, twin.refresh_forecasts),
        }
        for name, (interval, job) in periodic.items():
            if interval is not None:
                task = asyncio.create_task(_every(interval, name, job), name=f"derim-{name}")
                stack.push_async_callback(cancel_and_wait, task)
        yield services


async def _opened(stack: contextlib.AsyncExitStack, file: FileT) -> FileT:
    """``file`` opened, and closed when ``stack`` unwinds."""
    await file.open()
    stack.callback(file.close)
    return file


def _status_event(
    events: EventHub, device_id: str, previous: ConnectionState, status: DeviceStatus
) -> None:
    """Publish a device's change of connection state, with the state before, the error (if
    any) and when the device last answered."""
    kind = STATE_EVENTS.get(status.state)
    if kind is None:
        return
    data = {
        "previous": previous.value,
        "reason": status.last_error,
        "last_seen": None if status.last_seen is None else status.last_seen.isoformat(),
    }
    events.publish(Event(type=kind, device_id=device_id, data=data))


async def _latest(store: Store, device_id: str) -> dict[str, object] | None:
    """A device's latest stored reading (None when storage is unreachable or has none)."""
    try:
        return (await store.latest([device_id])).get(device_id)
    except DerimError as exc:
        log.warning("no latest reading of %s for a safety check: %s", device_id, exc)
        return None


def _members(registry: DeviceRegistry, schedule: Schedule) -> list[str]:
    """The devices a schedule addresses now: its device, or its group's members."""
    if schedule.device_id is not None:
        return [schedule.device_id]
    return [d.id for d in registry.list() if schedule.group in d.groups]


def _warn_about_auth(settings: Settings, keys: KeyStore) -> None:
    """Say loudly when the API is open, and how to get in when no key exists yet."""
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (auth_enabled: false): anyone who can reach the API "
            "may read, control and reconfigure every device. Use this only for a local demo."
        )
    elif not keys.listing():
        log.warning("no API keys yet: create one with `derim keys create --role admin --name me`")


def _mqtt_adapter(
    settings: Settings, registry: DeviceRegistry, rejects: RejectStore
) -> MqttAdapter:
    """The broker's adapter with the configured mappings; ``ConfigError`` if one is unusable."""
    mappings = [
        load_mapping(Path(name)) if name.endswith((".yaml", ".yml")) else shipped_mapping(name)
        for name in settings.mqtt_mappings
    ]
    data, responses = MqttAdapter.filters(mappings, settings.mqtt_shared_group)
    client = MqttClient(settings, [*data, *responses])
    return MqttAdapter(
        client, mappings, registry, rejects, register_unknown=settings.mqtt_register_unknown
    )


async def _every(interval_s: float, name: str, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval_s`` seconds; a failure is logged with its traceback and the
    job runs again at the next interval (a background job must not die silently)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:
            log.exception("periodic %s failed; next try in %.0f s", name, interval_s)


async def _maintain(services: Services) -> None:
    """Apply retention periodically."""
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)
        days = services.settings.retention_days
        if days is None:
            continue
        cutoff_ms = int((time.time() - days * 86_400) * 1000)
        try:
            await services.store.apply_retention(cutoff_ms)
        except DerimError as exc:
            log.warning("retention failed: %s", exc)
