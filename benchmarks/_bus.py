"""The "ours" side of the ingest benchmarks: records through IngestBus and the durable writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from derim.bus import IngestBus
from derim.config import Settings
from derim.models.telemetry import DERTelemetry
from derim.storage.base import Store
from derim.storage.durable import DurableWriter
from derim.storage.spool import Spool

WRITE_TIMEOUT_S = 600.0


async def ingest_through_bus(
    store: Store,
    spool_path: Path,
    chunks: list[list[DERTelemetry]],
    after: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, float]:
    """Seconds to publish every chunk until all is written, and seconds ``after`` then takes.

    Uses the server's bus defaults; fails if anything was dropped or spooled.
    """
    total = sum(len(c) for c in chunks)
    defaults = Settings.model_fields
    spool = Spool(spool_path)
    await store.open()
    await spool.open()
    writer = DurableWriter(store, spool)
    bus = IngestBus(
        writer.write,
        max_batch=defaults["ingest_max_batch"].default,
        max_pending=defaults["ingest_max_pending"].default,
    )
    writer.start()
    bus.start()
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        for chunk in chunks:
            await bus.publish(chunk)
        while bus.counters.written < total:
            if time.monotonic() > deadline or bus.counters.dropped:
                raise RuntimeError(f"bus wrote {bus.counters.written} of {total}")
            await asyncio.sleep(0.0005)
        ingested = time.perf_counter()
        if after is not None:
            await after()
        finished = time.perf_counter()
        if writer.counters.spooled or writer.counters.stored != total:
            raise RuntimeError(f"unexpected write counters {writer.counters}")
    finally:
        await bus.stop()
        await writer.stop()
        await store.close()
        await spool.close()
    return ingested - started, finished - ingested
