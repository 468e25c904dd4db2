"""The event hub: fan-out to every subscription, drop-oldest when full, unsubscribing."""

from __future__ import annotations

import asyncio

from derim.bus.events import Event, EventHub, EventType


def event(device_id: str) -> Event:
    return Event(type=EventType.DEVICE_ONLINE, device_id=device_id)


async def test_every_subscription_gets_every_event_in_order() -> None:
    """Two subscriptions each receive all published events, oldest first."""
    hub = EventHub()
    first, second = hub.subscribe(), hub.subscribe()
    for name in ("a", "b", "c"):
        hub.publish(event(name))
    assert [(await first.get()).device_id for _ in range(3)] == ["a", "b", "c"]
    assert [(await second.get()).device_id for _ in range(3)] == ["a", "b", "c"]
    assert hub.published == 3


async def test_a_full_subscription_drops_its_oldest_and_counts_them() -> None:
    """Past ``max_events`` unread, the oldest events go and ``lost`` counts them; a roomy
    subscription on the same hub loses nothing."""
    hub = EventHub()
    small, roomy = hub.subscribe(max_events=2), hub.subscribe(max_events=10)
    for name in ("a", "b", "c", "d", "e"):
        hub.publish(event(name))
    assert small.lost == 3
    assert [(await small.get()).device_id for _ in range(2)] == ["d", "e"]
    assert roomy.lost == 0
    assert [(await roomy.get()).device_id for _ in range(5)] == ["a", "b", "c", "d", "e"]


async def test_get_waits_for_the_next_event() -> None:
    """A consumer waiting on an empty subscription is woken by the next publish."""
    hub = EventHub()
    subscription = hub.subscribe()
    waiting = asyncio.create_task(subscription.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    hub.publish(event("a"))
    async with asyncio.timeout(5):
        assert (await waiting).device_id == "a"


async def test_a_closed_subscription_receives_nothing_more() -> None:
    """After ``close`` (twice is harmless) the subscription gets no events; others still do."""
    hub = EventHub()
    closed, open_ = hub.subscribe(), hub.subscribe()
    closed.close()
    closed.close()
    hub.publish(event("a"))
    assert (await open_.get()).device_id == "a"
    waiting = asyncio.create_task(closed.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
