"""The ingest bus: adapters publish canonical records; storage and subscribers consume them."""

from derim.bus.ingest import BusCounters, IngestBus, Subscription

__all__ = ["BusCounters", "IngestBus", "Subscription"]
