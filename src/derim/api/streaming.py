"""Live fan-out of telemetry and events to WebSocket and SSE clients.

One hub task takes each bus batch and each event once, encodes it once per distinct filter, and
appends the bytes to every matching client's bounded buffer. A client that falls behind loses its
oldest messages and is told how many in a ``gap`` message; nobody waits for it, the bus least.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from derim.bus import IngestBus, Subscription
from derim.bus.events import Event, EventHub, EventSubscription, EventType
from derim.errors import ConflictError
from derim.models.telemetry import DERTelemetry
from derim.storage.registry import DeviceRegistry
from derim.tasks import cancel_and_wait

HUB_BATCHES = 16_384
"""Published batches the hub itself may fall behind by before it loses the oldest (then every
client gets a gap notice)."""
COALESCE_S = 0.02
"""Readings published within this long go out as one message, so a client gets at most ~50
telemetry messages a second however the devices' readings are spread."""


class TelemetryMessage(BaseModel):
    """Readings that passed the bus, each with ``device_id``, ``timestamp`` and its fields."""

    type: Literal["telemetry"] = "telemetry"
    records: list[dict[str, Any]] = Field(description="Canonical readings, absent fields omitted.")


class EventMessage(BaseModel):
    """A device going online, degraded or offline, a command's result, or an anomaly."""

    type: Literal["event"] = "event"
    event: EventType
    device_id: str
    at: datetime
    data: dict[str, Any]


class GapMessage(BaseModel):
    """Messages this client lost because it read more slowly than they came."""

    type: Literal["gap"] = "gap"
    lost: int = Field(description="Messages dropped for this client since its last gap notice.")


class HelloMessage(BaseModel):
    """The first message: the filter the stream applies."""

    type: Literal["hello"] = "hello"
    devices: list[str]
    device_types: list[str]
    groups: list[str]
    fields: list[str]
    events: bool


@dataclass(frozen=True)
class StreamFilter:
    """What a client wants; an empty set means everything."""

    devices: frozenset[str] = frozenset()
    device_types: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    fields: frozenset[str] = frozenset()
    events: bool = True

    def hello(self) -> str:
        """The hello message describing this filter."""
        return HelloMessage(
            devices=sorted(self.devices),
            device_types=sorted(self.device_types),
            groups=sorted(self.groups),
            fields=sorted(self.fields),
            events=self.events,
        ).model_dump_json()


@dataclass
class StreamClient:
    """One connected client: its filter and its bounded buffer of encoded messages."""

    filter: StreamFilter
    buffer: deque[str]
    """Encoded JSON messages: text, decoded once per message for every client."""
    lost: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, message: str) -> None:
        """Append a message, dropping (and counting) the oldest when the buffer is full."""
        if len(self.buffer) == self.buffer.maxlen:
            self.lost += 1
        self.buffer.append(message)
        self.ready.set()

    async def next(self) -> str:
        """The next message to send; a gap notice first when messages were dropped."""
        while not self.buffer and not self.lost:
            self.ready.clear()
            await self.ready.wait()
        if self.lost:
            lost, self.lost = self.lost, 0
            return GapMessage(lost=lost).model_dump_json()
        return self.buffer.popleft()


@dataclass
class HubCounters:
    """Totals since start, for ``/health``."""

    messages: int = 0
    dropped: int = 0
    hub_lost_batches: int = 0


class StreamHub:
    """Subscribes to the bus and the event hub; serves every stream client."""

    def __init__(
        self,
        bus: IngestBus,
        events: EventHub,
        registry: DeviceRegistry,
        *,
        buffer: int,
        max_clients: int,
        snapshot: Callable[[], list[Event]] | None = None,
    ) -> None:
        self._bus = bus
        self._snapshot = snapshot
        self._events = events
        self._registry = registry
        self._buffer = buffer
        self._max_clients = max_clients
        self.clients: list[StreamClient] = []
        self.counters = HubCounters()
        self._subscription: Subscription | None = None
        self._event_subscription: EventSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Subscribe and start forwarding."""
        self._subscription = self._bus.subscribe(HUB_BATCHES)
        self._event_subscription = self._events.subscribe(HUB_BATCHES)
        self._tasks = [
            asyncio.create_task(self._forward_batches(self._subscription), name="stream-batches"),
            asyncio.create_task(
                self._forward_events(self._event_subscription), name="stream-events"
            ),
        ]

    async def aclose(self) -> None:
        """Stop forwarding and unsubscribe."""
        for task in self._tasks:
            await cancel_and_wait(task)
        if self._subscription is not None:
            self._subscription.close()
        if self._event_subscription is not None:
            self._event_subscription.close()

    def connect(self, stream_filter: StreamFilter) -> StreamClient:
        """A new client, given the hello and the current state of its devices (``snapshot``);
        ConflictError when the server holds its maximum of clients."""
        if len(self.clients) >= self._max_clients:
            raise ConflictError(f"the server already streams to {self._max_clients} clients")
        client = StreamClient(stream_filter, deque(maxlen=self._buffer))
        client.push(stream_filter.hello())
        if stream_filter.events and self._snapshot is not None:
            for event in self._snapshot():
                if self._matches(event.device_id, stream_filter):
                    client.push(_event_message(event))
        self.clients.append(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        """Forget a client (idempotent)."""
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        self.counters.dropped += client.lost

    async def _forward_batches(self, subscription: Subscription) -> None:
        lost_seen = 0
        while True:
            first = await subscription.get()
            await asyncio.sleep(COALESCE_S)
            batch = [record for part in (first, *subscription.drain()) for record in part]
            if subscription.lost_batches != lost_seen:
                self.counters.hub_lost_batches = subscription.lost_batches
                lost = subscription.lost_batches - lost_seen
                lost_seen = subscription.lost_batches
                for client in self.clients:
                    client.lost += lost
                    client.ready.set()
            if self.clients:
                self._dispatch(batch)

    def _dispatch(self, batch: Sequence[DERTelemetry]) -> None:
        """Encode the batch once per distinct filter and hand it to the matching clients."""
        by_filter: dict[StreamFilter, list[StreamClient]] = {}
        for client in self.clients:
            by_filter.setdefault(client.filter, []).append(client)
        readings = [(record, record.model_dump(exclude_none=True)) for record in batch]
        for stream_filter, clients in by_filter.items():
            chosen = [
                _project(data, stream_filter.fields)
                for record, data in readings
                if self._matches(record.device_id, stream_filter)
            ]
            if not chosen:
                continue
            message = orjson.dumps(
                {"type": "telemetry", "records": chosen}, option=orjson.OPT_UTC_Z
            ).decode()
            for client in clients:
                client.push(message)
            self.counters.messages += len(clients)

    async def _forward_events(self, subscription: EventSubscription) -> None:
        while True:
            event = await subscription.get()
            message = _event_message(event)
            for client in self.clients:
                if client.filter.events and self._matches(event.device_id, client.filter):
                    client.push(message)
                    self.counters.messages += 1

    def _matches(self, device_id: str, stream_filter: StreamFilter) -> bool:
        """Whether a device passes the filter's device, type and group sets."""
        if stream_filter.devices and device_id not in stream_filter.devices:
            return False
        if not stream_filter.device_types and not stream_filter.groups:
            return True
        device = self._registry.find(device_id)
        if device is None:
            return False
        if (
            stream_filter.device_types
            and device.device_type.value not in stream_filter.device_types
        ):
            return False
        return not stream_filter.groups or bool(stream_filter.groups.intersection(device.groups))


def _project(data: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The reading with only the asked fields (plus its keys); all of it when none are asked."""
    wanted = frozenset(fields)
    if not wanted:
        return data
    return {k: v for k, v in data.items() if k in wanted or k in ("device_id", "timestamp")}


def _event_message(event: Event) -> str:
    """An event as its stream message."""
    return EventMessage(
        event=event.type, device_id=event.device_id, at=event.at, data=event.data
    ).model_dump_json()
