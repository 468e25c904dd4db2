"""Prometheus metrics, read from the core's counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from derim.runtime import PAUSE_BUCKETS_S, PAUSES
from derim.services import Services


class CoreCollector(Collector):
    """Exposes bus, storage and spool counters of one running core."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        bus = self._services.bus.counters
        writes = self._services.writer.counters
        counters = {
            "derim_ingest_records_received": ("Records published to the bus.", bus.received),
            "derim_ingest_records_written": ("Records the bus handed to storage.", bus.written),
            "derim_ingest_records_dropped": ("Records no sink accepted (must be 0).", bus.dropped),
            "derim_ingest_batches": ("Batches written by the bus.", bus.batches),
            "derim_storage_records_stored": ("Records stored directly.", writes.stored),
            "derim_storage_records_spooled": ("Records diverted to the spool.", writes.spooled),
            "derim_storage_records_replayed": ("Records replayed from the spool.", writes.replayed),
        }
        for name, (help_text, value) in counters.items():
            yield CounterMetricFamily(name, help_text, value=value)
        gauges = {
            "derim_spool_depth_records": (
                "Records waiting in the spool.",
                self._services.spool.depth,
            ),
            "derim_bus_pending_records": ("Records queued on the bus.", self._services.bus.pending),
            "derim_devices": ("Registered devices.", len(self._services.registry.list())),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=value)
        if PAUSES.installed:
            yield _pause_histogram()


def _pause_histogram() -> HistogramMetricFamily:
    """The garbage collector's pauses since start (``derim serve`` records them)."""
    cumulative, running = [], 0
    for bound, count in zip([*map(str, PAUSE_BUCKETS_S), "+Inf"], PAUSES.counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return HistogramMetricFamily(
        "derim_gc_pause_seconds",
        "Pauses of Python's cyclic garbage collector (every task waits), s.",
        buckets=cumulative,
        sum_value=PAUSES.total_s,
    )


def render_metrics(services: Services) -> bytes:
    """The Prometheus text exposition of the core's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(services))
    return generate_latest(registry)
