"""Wiring of the core: registry, store, spool, durable writer and ingest bus, opened together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from derim.adapters.manager import AdapterManager
from derim.bus import IngestBus
from derim.config import Settings
from derim.errors import ConfigError, DerimError, InvalidRequestError
from derim.models.telemetry import DERTelemetry
from derim.storage.base import Store
from derim.storage.durable import DurableWriter
from derim.storage.registry import DeviceRegistry
from derim.storage.spool import Spool
from derim.storage.sqlite import SQLiteStore

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 30.0


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
    started_at: float = field(default_factory=time.time)

    async def ingest(self, records: Sequence[DERTelemetry]) -> None:
        """Publish records and wait until they are stored or spooled."""
        await self.bus.publish(records, wait=True)


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
        adapters = AdapterManager(bus.publish)
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
        services = Services(settings, registry, store, spool, writer, bus, adapters)
        maintenance = asyncio.create_task(_maintain(services), name="derim-maintenance")
        stack.push_async_callback(_cancel, maintenance)
        yield services


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


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
