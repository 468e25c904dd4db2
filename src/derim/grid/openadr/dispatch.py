"""Keeps each device at the most restrictive limit that the active steps of all accepted
events give it, sending a command at each step's start, clearing a limit lifted early and
sending again, after a backoff, what a device did not take (also when it failed a command the
control layer had reported ``sent``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from derim.adapters.base import Backoff
from derim.grid.fleet import FleetAccess, Outcome, submit_each
from derim.grid.openadr.signals import SOURCE, Step
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType

log = logging.getLogger(__name__)
CLEAR = CommandRequest(command=CommandType.CLEAR_POWER_LIMIT, source=SOURCE)
Clock = Callable[[], datetime]
TAKEN = frozenset({CommandStatus.ACKNOWLEDGED, CommandStatus.SENT})
"""A device holds a command the control layer records at these statuses (``sent``: the
device has yet to answer; the control layer completes the record)."""
RETRY_BACKOFF = Backoff(initial_s=5.0, max_s=300.0)
"""Waits before sending again a command a device did not take."""
SENT_CHECK = timedelta(seconds=5)
"""How often the records of commands still ``sent`` are looked at again."""


@dataclass(frozen=True)
class _Retry:
    """A command a device did not take: sent again at ``due`` if still wanted."""

    request: CommandRequest
    failures: int
    due: datetime


@dataclass(frozen=True)
class _UnderWay:
    """A command recorded ``sent``: the control layer completes ``record`` in place when the
    device answers; ``before`` is the limit the device held until then."""

    request: CommandRequest
    record: CommandResult
    before: CommandRequest | None


class LimitDispatcher:
    """The steps of every accepted event, applied to the devices through the control layer.

    A limit sent for a step lapses by itself at the step's end (``expires_at``); one lifted
    before its end (the event cancelled or changed) is cleared with ``clear_power_limit``. A
    command the device did not take (refused, failed, timed out) is sent again after a capped
    backoff for as long as it is still wanted.
    """

    def __init__(
        self,
        fleet: FleetAccess,
        clock: Clock = lambda: datetime.now(UTC),
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        self.fleet = fleet
        self.clock = clock
        self.backoff = backoff
        self._plans: dict[str, Sequence[Step]] = {}
        self._applied: dict[str, CommandRequest] = {}
        """The limit each device took (acknowledged, or sent and under way)."""
        self._retries: dict[str, _Retry] = {}
        self._under_way: dict[str, _UnderWay] = {}
        self._changed = asyncio.Event()

    def put(self, event_id: str, steps: Sequence[Step]) -> None:
        """Carry out an event's steps (replacing its earlier ones)."""
        self._plans[event_id] = steps
        self._changed.set()

    def drop(self, event_id: str) -> None:
        """Stop carrying out an event (cancelled, completed or opted out of)."""
        if self._plans.pop(event_id, None) is not None:
            self._changed.set()

    def keep_only(self, event_ids: Collection[str]) -> list[str]:
        """Stop carrying out every event not in ``event_ids``; the ones dropped."""
        dropped = [key for key in self._plans if key not in event_ids]
        for key in dropped:
            self.drop(key)
        return dropped

    async def run(self) -> None:
        """Apply what is due, then sleep until the next step starts or ends, a retry is due
        or events change."""
        while True:
            self._changed.clear()
            try:
                await self.apply(self.clock())
            except Exception:  # a bug must not end demand response for good: log, go on
                log.exception("openadr: applying event limits failed")
            wake = self._next_wake(self.clock())
            delay = None if wake is None else max(0.0, (wake - self.clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def apply(self, now: datetime) -> None:
        """Send each device the limit due at ``now`` unless it holds it already; clear a limit
        no step holds any more before it lapsed; resend what a device did not take once its
        retry is due."""
        self._forget_ended(now)
        self._check_under_way(now)
        wanted = self.desired(now)
        concerned = [*wanted, *(d for d in self._applied if d not in wanted)]
        for device_id in self._retries.keys() - set(concerned):
            del self._retries[device_id]
        batches: dict[str, tuple[CommandRequest, list[str]]] = {}
        for device_id in concerned:
            request = self._due(device_id, wanted.get(device_id), now)
            if request is not None:
                batches.setdefault(request.model_dump_json(), (request, []))[1].append(device_id)
        for request, device_ids in batches.values():
            for outcome in await submit_each(self.fleet, device_ids, request):
                self._settle(outcome, request, now)

    def _due(
        self, device_id: str, wanted: CommandRequest | None, now: datetime
    ) -> CommandRequest | None:
        """The command ``device_id`` needs at ``now`` to hold ``wanted`` (None: no limit), or
        None when it holds it or the retry of that command is not due yet."""
        held = self._applied.get(device_id)
        if held is not None and held.expires_at is not None and held.expires_at <= now:
            del self._applied[device_id]
            held = None
        if wanted == held:
            self._retries.pop(device_id, None)
            return None
        request = CLEAR if wanted is None else wanted
        retry = self._retries.get(device_id)
        if retry is not None and retry.request != request:
            del self._retries[device_id]
        elif retry is not None and retry.due > now:
            return None
        return request

    def _settle(self, outcome: Outcome, request: CommandRequest, now: datetime) -> None:
        """Remember what the device took, or when to try again."""
        device_id = outcome.device_id
        record = outcome.result
        if record is None or record.status not in TAKEN:
            self._retry_later(device_id, request, outcome.describe(), now)
            return
        self._retries.pop(device_id, None)
        before = self._applied.get(device_id)
        if request.command is CommandType.SET_POWER_LIMIT:
            self._applied[device_id] = request
        else:
            self._applied.pop(device_id, None)
        if record.status is CommandStatus.SENT:
            self._under_way[device_id] = _UnderWay(request, record, before)
        else:
            self._under_way.pop(device_id, None)

    def _check_under_way(self, now: datetime) -> None:
        """Forget the commands under way that their devices acknowledged since; for one a
        device failed, take the device to hold its limit from before, and send it again after
        the backoff."""
        for device_id, pending in list(self._under_way.items()):
            status = pending.record.status
            if status is CommandStatus.SENT:
                continue
            del self._under_way[device_id]
            if status is CommandStatus.ACKNOWLEDGED:
                continue
            if pending.before is None:
                self._applied.pop(device_id, None)
            else:
                self._applied[device_id] = pending.before
            self._retry_later(device_id, pending.request, f"{status.value} after it was sent", now)

    def _retry_later(
        self, device_id: str, request: CommandRequest, why: str, now: datetime
    ) -> None:
        """Send ``request`` again after the backoff, longer at each failure in a row."""
        previous = self._retries.get(device_id)
        failures = 1 if previous is None else previous.failures + 1
        wait = timedelta(seconds=self.backoff.delay(failures))
        self._retries[device_id] = _Retry(request, failures, now + wait)
        log.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "openadr %s to %s: %s; trying again in %.0f s",
            request.command.value,
            device_id,
            why,
            wait.total_seconds(),
        )

    def desired(self, now: datetime) -> dict[str, CommandRequest]:
        """Each device's most restrictive limit among the steps active at ``now``."""
        candidates: dict[str, list[CommandRequest]] = defaultdict(list)
        for steps in self._plans.values():
            for step in steps:
                if step.active(now):
                    for device_id, request in step.requests.items():
                        candidates[device_id].append(request)
        return {
            device_id: min(requests, key=lambda r: self._in_kw(device_id, r))
            for device_id, requests in candidates.items()
        }

    def _forget_ended(self, now: datetime) -> None:
        """Drop events whose every step has ended."""
        for event_id, steps in list(self._plans.items()):
            if all(step.end is not None and step.end <= now for step in steps):
                del self._plans[event_id]

    def _in_kw(self, device_id: str, request: CommandRequest) -> float:
        """A limit in kW when the device's rating allows, to compare % with kW."""
        value = request.value or 0.0
        device = self.fleet.device(device_id)
        if request.unit == "%" and device is not None and device.rated_power_kw is not None:
            return value / 100 * device.rated_power_kw
        return value

    def _next_wake(self, now: datetime) -> datetime | None:
        """The next instant after ``now`` at which a step starts or ends, a retry is due or
        commands under way are looked at again."""
        instants = [
            instant
            for steps in self._plans.values()
            for step in steps
            for instant in (step.start, step.end)
            if instant is not None and instant > now
        ]
        instants.extend(retry.due for retry in self._retries.values() if retry.due > now)
        if self._under_way:
            instants.append(now + SENT_CHECK)
        return min(instants, default=None)
