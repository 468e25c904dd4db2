"""The polling engine: own interval per device, timeouts, backoff, reconnect, status."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from fake_devices import ReadOnlyDevice

from async_helpers import Sink, until
from derim.adapters.base import Backoff, ConnectionState, PollSettings
from derim.errors import ProtocolError, TransportError
from derim.models.telemetry import DERTelemetry


class FakeDevice(ReadOnlyDevice):
    """A device double at the transport seam; its behaviour is switched by the test."""

    def __init__(self, device_id: str, settings: PollSettings) -> None:
        super().__init__(device_id, settings)
        self.reachable = True
        self.hang = False
        self.garbage = False
        self.connects = 0
        self.disconnects = 0

    async def connect(self) -> None:
        self.connects += 1
        if not self.reachable:
            raise TransportError("connection refused")

    async def disconnect(self) -> None:
        self.disconnects += 1

    async def read_once(self) -> Sequence[DERTelemetry]:
        if self.hang:
            await asyncio.sleep(3600)
        if not self.reachable:
            raise TransportError("connection reset")
        if self.garbage:
            raise ProtocolError("frame with bad length")
        return self.reading()


FAST = PollSettings(interval_s=0.001, timeout_s=0.5, backoff=Backoff(initial_s=0.001, max_s=0.01))


async def run_all(*devices: FakeDevice, sink: Sink) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(d.run(sink)) for d in devices]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_healthy_device_publishes_and_is_online() -> None:
    """A reachable device is polled repeatedly, its readings published, its status online."""
    sink = Sink()
    device = FakeDevice("ok", FAST)
    tasks = await run_all(device, sink=sink)
    await until(lambda: sink.count("ok") >= 5)
    await stop(tasks)
    assert device.status.state is ConnectionState.ONLINE
    assert device.status.last_seen is not None
    assert device.connects == 1, "one connection serves every poll"


async def test_dead_device_backs_off_without_delaying_others() -> None:
    """A dead device waits out its own backoff while a healthy one keeps its pace."""
    sink = Sink()
    dead = FakeDevice("dead", PollSettings(interval_s=0.001, backoff=Backoff(initial_s=30.0)))
    dead.reachable = False
    healthy = FakeDevice("ok", FAST)
    tasks = await run_all(dead, healthy, sink=sink)
    await until(lambda: sink.count("ok") >= 50)
    await stop(tasks)
    assert dead.connects == 1, "still in its 30 s backoff after the first failure"
    assert dead.status.state is ConnectionState.OFFLINE
    assert dead.status.last_error is not None
    assert "refused" in dead.status.last_error
    assert sink.count("dead") == 0


async def test_hung_device_times_out_and_recovers_by_reconnecting() -> None:
    """A device that stops answering is cut off by the timeout and reconnected when it returns."""
    sink = Sink()
    device = FakeDevice(
        "flaky",
        PollSettings(interval_s=0.001, timeout_s=0.05, backoff=Backoff(initial_s=0.01, max_s=0.02)),
    )
    tasks = await run_all(device, sink=sink)
    await until(lambda: sink.count("flaky") >= 1)
    device.hang = True
    await until(lambda: device.status.state is ConnectionState.OFFLINE)
    assert "TimeoutError" in (device.status.last_error or "")
    before = sink.count("flaky")
    device.hang = False
    await until(lambda: sink.count("flaky") > before)
    await stop(tasks)
    assert device.status.state is ConnectionState.ONLINE
    assert device.connects >= 2, "recovery went through a fresh connection"
    assert device.disconnects >= 1


async def test_undecodable_answers_mark_the_device_degraded_then_online() -> None:
    """Protocol errors make a device degraded (not offline); good reads restore it."""
    sink = Sink()
    device = FakeDevice("garbled", FAST)
    device.garbage = True
    tasks = await run_all(device, sink=sink)
    await until(lambda: device.status.consecutive_failures >= 3)
    assert device.status.state is ConnectionState.DEGRADED
    device.garbage = False
    await until(lambda: sink.count("garbled") >= 1)
    await stop(tasks)
    assert device.status.state is ConnectionState.ONLINE
    assert device.status.consecutive_failures == 0


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 1.0, 1.1), (3, 4.0, 4.4), (20, 60, 66)])
def test_backoff_grows_and_is_capped(failures: int, low: float, high: float) -> None:
    """Delays double per failure, carry at most 10% jitter and stop growing at the cap."""
    delay = Backoff(initial_s=1.0, max_s=60.0).delay(failures)
    assert low <= delay <= high
