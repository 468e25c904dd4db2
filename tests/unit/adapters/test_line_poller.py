"""LinePoller: one task polls every device of a shared connection, each on its own schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from fake_devices import ReadOnlyDevice

from async_helpers import Sink, until
from derim.adapters.base import Backoff, ConnectionState, PollingAdapter, PollSettings
from derim.adapters.line import LinePoller
from derim.errors import TransportError
from derim.models.telemetry import DERTelemetry

LINE = "tcp://10.0.0.5:502"


class LineDevice(ReadOnlyDevice):
    """A device double on a shared connection; its behaviour is switched by the test."""

    protocol = "fake-line"

    def __init__(
        self, device_id: str, settings: PollSettings, trace: list[str] | None = None
    ) -> None:
        super().__init__(device_id, settings)
        self.line = LINE
        self.reachable = True
        self.crash = False
        self.gate: asyncio.Event | None = None
        """When set by the test, ``read_once`` waits for it (a slow answer)."""
        self.entered = asyncio.Event()
        """Set once ``read_once`` has started."""
        self.cancelled = False
        self.trace = trace if trace is not None else []

    async def connect(self) -> None:
        if not self.reachable:
            raise TransportError("connection refused")

    async def disconnect(self) -> None:
        pass

    async def read_once(self) -> Sequence[DERTelemetry]:
        self.trace.append(f"start {self.device_id}")
        self.entered.set()
        try:
            if self.crash:
                raise RuntimeError("bug in the decoder")
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)  # give any other poll the chance to overlap this one
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.trace.append(f"end {self.device_id}")
        if not self.reachable:
            raise TransportError("connection reset")
        return self.reading()


def every(interval_s: float, backoff: Backoff | None = None) -> PollSettings:
    """Settings polling every ``interval_s`` with a short backoff unless one is given."""
    return PollSettings(
        interval_s=interval_s,
        timeout_s=0.5,
        backoff=backoff or Backoff(initial_s=0.001, max_s=0.01, jitter=0.0),
    )


def line_tasks() -> list[asyncio.Task[object]]:
    """Running tasks of line pollers."""
    tasks = asyncio.all_tasks()
    return [t for t in tasks if t.get_name().startswith("derim-line") and not t.done()]


async def remove_all(poller: LinePoller, *devices: PollingAdapter) -> None:
    for device in devices:
        await poller.remove(device)


async def test_devices_are_polled_at_their_own_rates() -> None:
    """Each device keeps its own interval: a 10 ms device is polled several times as often as a
    40 ms one, and a 60 s device only once, all by the one task of the line."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    fast = LineDevice("fast", every(0.01))
    slow = LineDevice("slow", every(0.04))
    idle = LineDevice("idle", every(60.0))
    for device in (fast, slow, idle):
        poller.add(device)
    await until(lambda: slow.status.polls >= 6)
    fast_polls, slow_polls = fast.status.polls, slow.status.polls
    assert len(line_tasks()) == 1, "one task polls the whole line"
    await remove_all(poller, fast, slow, idle)
    assert 2 * slow_polls <= fast_polls <= 8 * slow_polls, (fast_polls, slow_polls)
    assert idle.status.polls == 1, "not due again for a minute"
    assert sink.count("fast") == fast_polls
    assert sink.count("slow") == slow_polls


async def test_polls_on_the_line_never_overlap() -> None:
    """The line carries one poll at a time, and devices due together start in the order they
    were added."""
    trace: list[str] = []
    sink = Sink()
    poller = LinePoller(LINE, sink)
    devices = [LineDevice(name, every(0.002), trace) for name in ("a", "b", "c")]
    for device in devices:
        poller.add(device)
    await until(lambda: all(d.status.polls >= 10 for d in devices))
    await remove_all(poller, *devices)
    assert [entry for entry in trace if entry.startswith("start")][:3] == [
        "start a",
        "start b",
        "start c",
    ]
    completed = trace[: len(trace) - len(trace) % 2]
    for start, end in zip(completed[::2], completed[1::2], strict=True):
        assert start.startswith("start")
        assert end == start.replace("start", "end"), "another poll began before this one ended"


async def test_failing_device_backs_off_while_others_keep_polling() -> None:
    """A device whose reads fail waits out its (30 s) backoff; the healthy one on the same line
    keeps being polled and published meanwhile."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    dead = LineDevice("dead", every(0.001, Backoff(initial_s=30.0, max_s=60.0)))
    dead.reachable = False
    healthy = LineDevice("ok", every(0.002))
    poller.add(dead)
    poller.add(healthy)
    await until(lambda: sink.count("ok") >= 30)
    await remove_all(poller, dead, healthy)
    assert dead.status.polls == 1, "still in its backoff after the first failure"
    assert dead.status.state is ConnectionState.OFFLINE
    assert "refused" in (dead.status.last_error or "")
    assert sink.count("dead") == 0
    assert healthy.status.state is ConnectionState.ONLINE


async def test_failing_device_is_retried_after_backoff_and_recovers() -> None:
    """A device failing on the line is retried when its backoff ends and published again once
    it answers, without the healthy device stalling."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    flaky = LineDevice("flaky", every(0.002, Backoff(initial_s=0.005, max_s=0.01, jitter=0.0)))
    flaky.reachable = False
    healthy = LineDevice("ok", every(0.002))
    poller.add(flaky)
    poller.add(healthy)
    await until(lambda: flaky.status.consecutive_failures >= 3)
    before = sink.count("ok")
    flaky.reachable = True
    await until(lambda: sink.count("flaky") >= 1 and sink.count("ok") > before)
    await remove_all(poller, flaky, healthy)
    assert flaky.status.state is ConnectionState.ONLINE
    assert flaky.status.consecutive_failures == 0


async def test_device_added_later_is_polled_without_waiting_for_the_line() -> None:
    """A device added while the poller sleeps until a due time a minute away is polled at once,
    and the waiting device is not polled early because of it."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    first = LineDevice("first", every(60.0))
    poller.add(first)
    await until(lambda: sink.count("first") == 1)
    await asyncio.sleep(0.01)  # the poller is now asleep until the first device is due again
    late = LineDevice("late", every(60.0))
    poller.add(late)
    await until(lambda: sink.count("late") == 1, timeout_s=5.0)
    await remove_all(poller, first, late)
    assert first.status.polls == 1
    assert len(line_tasks()) == 0


async def test_removed_device_is_no_longer_polled() -> None:
    """After ``remove`` a device is not polled again; the others on the line go on."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    kept = LineDevice("kept", every(0.002))
    gone = LineDevice("gone", every(0.002))
    poller.add(kept)
    poller.add(gone)
    await until(lambda: gone.status.polls >= 3)
    await poller.remove(gone)
    polls, published = gone.status.polls, sink.count("gone")
    target = kept.status.polls + 20
    await until(lambda: kept.status.polls >= target)
    await poller.remove(kept)
    assert gone.status.polls == polls
    assert sink.count("gone") == published


async def test_poll_in_progress_when_removed_publishes_nothing() -> None:
    """A device removed while its read is in flight: the read finishes, its reading is dropped,
    and the device is not polled again while the rest of the line carries on."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    kept = LineDevice("kept", every(0.002))
    slow = LineDevice("slow", every(0.002))
    slow.gate = asyncio.Event()
    poller.add(kept)
    poller.add(slow)
    async with asyncio.timeout(5.0):
        await slow.entered.wait()
    await poller.remove(slow)
    slow.gate.set()
    target = kept.status.polls + 10
    await until(lambda: kept.status.polls >= target)
    await poller.remove(kept)
    assert not slow.cancelled, "the poll of a device that is not the last one finishes"
    assert slow.status.polls == 1
    assert sink.count("slow") == 0
    assert sink.count("kept") >= 10


async def test_removing_the_last_device_ends_the_task() -> None:
    """When the last device leaves, the line's task ends (nothing left running) and the poller
    is empty; a device added afterwards starts a new task and is polled."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    only = LineDevice("only", every(0.002))
    poller.add(only)
    await until(lambda: only.status.polls >= 2)
    await poller.remove(only)
    assert poller.empty
    assert line_tasks() == []
    polls = only.status.polls
    newcomer = LineDevice("newcomer", every(0.002))
    poller.add(newcomer)
    await until(lambda: sink.count("newcomer") >= 2)
    await poller.remove(newcomer)
    assert line_tasks() == []
    assert only.status.polls == polls


async def test_removing_the_last_device_mid_poll_publishes_nothing() -> None:
    """Removing the last device while its read hangs ends the task without publishing that
    read, even when the read's answer arrives afterwards."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    hung = LineDevice("hung", every(0.002))
    hung.gate = asyncio.Event()
    poller.add(hung)
    async with asyncio.timeout(5.0):
        await hung.entered.wait()
    await poller.remove(hung)
    hung.gate.set()
    await asyncio.sleep(0.01)
    assert line_tasks() == []
    assert poller.empty
    assert sink.count("hung") == 0


async def test_unexpected_error_in_one_poll_is_logged_and_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug (RuntimeError) in one device's poll is logged with its traceback; the device is
    retried only after its longest backoff and the other device keeps being polled."""
    caplog.set_level(logging.ERROR, logger="derim.adapters.line")
    sink = Sink()
    poller = LinePoller(LINE, sink)
    buggy = LineDevice("buggy", every(0.001, Backoff(initial_s=0.001, max_s=30.0)))
    buggy.crash = True
    healthy = LineDevice("ok", every(0.002))
    poller.add(buggy)
    poller.add(healthy)
    await until(lambda: sink.count("ok") >= 20)
    assert len(line_tasks()) == 1, "the bug did not end the line's task"
    await remove_all(poller, buggy, healthy)
    assert buggy.status.polls == 1, "retried after backoff.max_s (30 s), not at its interval"
    errors = [r for r in caplog.records if r.name == "derim.adapters.line"]
    assert len(errors) == 1
    assert "buggy" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_device_with_a_bug_is_retried_after_its_longest_backoff() -> None:
    """A device whose poll keeps raising an unexpected error is still retried (after
    ``backoff.max_s``) rather than dropped from the line."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    buggy = LineDevice("buggy", every(0.001, Backoff(initial_s=0.001, max_s=0.005)))
    buggy.crash = True
    healthy = LineDevice("ok", every(0.002))
    poller.add(buggy)
    poller.add(healthy)
    await until(lambda: buggy.status.polls >= 3)
    buggy.crash = False
    await until(lambda: sink.count("buggy") >= 1)
    await remove_all(poller, buggy, healthy)
    assert sink.count("ok") >= 1


# Regression: at a7b85c2 ``remove`` left the device's entry in the ``_due`` heap, and adding the
# same adapter back pushed a second live entry, so a failing device was retried twice per backoff
# (fixed by the per-device tickets of ``LinePoller._queue``).
async def test_readded_device_has_a_single_schedule() -> None:
    """A device removed and added back is queued once: when it then fails, it is not polled
    again before its (30 s) backoff ends."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    steady = LineDevice("steady", every(0.01))
    readded = LineDevice("readded", every(0.01, Backoff(initial_s=30.0, max_s=60.0)))
    poller.add(steady)
    poller.add(readded)
    await until(lambda: readded.status.polls >= 2)
    await poller.remove(readded)
    readded.reachable = False
    poller.add(readded)
    target = steady.status.polls + 10
    await until(lambda: steady.status.polls >= target)
    await remove_all(poller, steady, readded)
    assert readded.status.consecutive_failures == 1, "polled again inside its backoff"


# Regression: at a7b85c2 a device added while ``remove`` awaited the cancelled task of the last
# device joined a poller whose task then ended (``add`` saw ``_task`` still set), and was never
# polled; reachable through ``AdapterManager.stop`` racing ``start`` on the same line.
async def test_device_added_while_last_one_is_removed_is_polled() -> None:
    """A device added while ``remove`` of the last device is still winding the task down is
    polled all the same."""
    sink = Sink()
    poller = LinePoller(LINE, sink)
    leaving = LineDevice("leaving", every(60.0))
    poller.add(leaving)
    await until(lambda: sink.count("leaving") == 1)
    removal = asyncio.create_task(poller.remove(leaving))
    await asyncio.sleep(0)  # remove() has cancelled the task and is waiting for it to end
    assert not removal.done()
    arriving = LineDevice("arriving", every(60.0))
    poller.add(arriving)
    await removal
    try:
        await until(lambda: sink.count("arriving") == 1, timeout_s=2.0)
    finally:
        await poller.remove(arriving)
