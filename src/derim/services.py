"""Wiring of the core: registry, store, spool, durable writer and ingest bus, opened together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from derim.bus import IngestBus
from derim.config import Settings
from derim.errors import DerimError
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
    started_at: float = field(default_factory=time.time)

    async def ingest(self, records: Sequence[DERTelemetry]) -> None:
        """Publish records and wait until they are stored or spooled."""
        await self.bus.publish(records, wait=True)


@contextlib.asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything, register the configured fleet, and close it all in reverse order."""
    registry = DeviceRegistry(settings.database_path)
    store = build_store(settings)
    spool = Spool(settings.data_dir / "spool.db")
    await registry.open()
    try:
        await spool.open()
        try:
            await store.open()
        except DerimError as exc:
            log.warning("storage not reachable at start, spooling until it is: %s", exc)
        writer = DurableWriter(store, spool, retry_interval_s=settings.spool_retry_s)
        bus = IngestBus(
            writer.write,
            max_batch=settings.ingest_max_batch,
            max_pending=settings.ingest_max_pending,
        )
        for device in settings.devices:
            await registry.upsert(device)
        services = Services(settings, registry, store, spool, writer, bus)
        writer.start()
        bus.start()
        maintenance = asyncio.create_task(_maintain(services), name="derim-maintenance")
        try:
            yield services
        finally:
            maintenance.cancel()
            await asyncio.gather(maintenance, return_exceptions=True)
            await bus.stop()
            await writer.stop()
            await store.close()
            await spool.close()
    finally:
        await registry.close()


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
