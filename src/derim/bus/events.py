"""Events beside telemetry (a device going online or offline, a command's result, an anomaly),
fanned out to bounded subscriptions that lose their oldest event, counted, rather than wait."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class EventType(StrEnum):
    """What happened."""

    DEVICE_ONLINE = "device_online"
    DEVICE_DEGRADED = "device_degraded"
    DEVICE_OFFLINE = "device_offline"
    COMMAND_RESULT = "command_result"
    ANOMALY = "anomaly"


class Event(BaseModel):
    """One event about one device, with its details."""

    type: EventType
    device_id: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, Any] = Field(default_factory=dict)


class EventSubscription:
    """A bounded stream of events for one consumer."""

    def __init__(self, hub: EventHub, max_events: int) -> None:
        self._hub = hub
        self._events: deque[Event] = deque(maxlen=max_events)
        self._ready = asyncio.Event()
        self.lost = 0

    def offer(self, event: Event) -> None:
        """Queue an event without waiting, evicting the oldest when full."""
        if len(self._events) == self._events.maxlen:
            self.lost += 1
        self._events.append(event)
        self._ready.set()

    async def get(self) -> Event:
        """The next event, waiting for one if none is queued."""
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def close(self) -> None:
        """Stop receiving events."""
        self._hub.unsubscribe(self)


class EventHub:
    """Publishes events to every subscription; publishing never waits."""

    def __init__(self) -> None:
        self._subscriptions: list[EventSubscription] = []
        self.published = 0

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscription (call from the event loop's thread)."""
        self.published += 1
        for subscription in self._subscriptions:
            subscription.offer(event)

    def subscribe(self, max_events: int = 1024) -> EventSubscription:
        """A new subscription holding at most ``max_events`` unread events."""
        subscription = EventSubscription(self, max_events)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: EventSubscription) -> None:
        """Remove a subscription (idempotent)."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
