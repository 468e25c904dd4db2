"""Keeps each device at the most restrictive limit that the active steps of all accepted
events give it, sending a command at each step's start and clearing a limit lifted early."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from derim.grid.fleet import FleetAccess, submit_each
from derim.grid.openadr.signals import SOURCE, Step
from derim.models.command import CommandRequest, CommandType

log = logging.getLogger(__name__)
CLEAR = CommandRequest(command=CommandType.CLEAR_POWER_LIMIT, source=SOURCE)
Clock = Callable[[], datetime]


class LimitDispatcher:
    """The steps of every accepted event, applied to the devices through the control layer.

    A limit sent for a step lapses by itself at the step's end (``expires_at``); one lifted
    before its end (the event cancelled or changed) is cleared with ``clear_power_limit``.
    """

    def __init__(self, fleet: FleetAccess, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.fleet = fleet
        self.clock = clock
        self._plans: dict[str, Sequence[Step]] = {}
        self._applied: dict[str, CommandRequest] = {}
        self._changed = asyncio.Event()

    def put(self, event_id: str, steps: Sequence[Step]) -> None:
        """Carry out an event's steps (replacing its earlier ones)."""
        self._plans[event_id] = steps
        self._changed.set()

    def drop(self, event_id: str) -> None:
        """Stop carrying out an event (cancelled, completed or opted out of)."""
        if self._plans.pop(event_id, None) is not None:
            self._changed.set()

    @property
    def event_ids(self) -> list[str]:
        """The events being carried out."""
        return list(self._plans)

    async def run(self) -> None:
        """Apply what is due, then sleep until the next step starts or ends or events change."""
        while True:
            self._changed.clear()
            try:
                await self.apply(self.clock())
            except Exception:  # a bug must not end demand response for good: log, go on
                log.exception("openadr: applying event limits failed")
            wake = self._next_boundary(self.clock())
            delay = None if wake is None else max(0.0, (wake - self.clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def apply(self, now: datetime) -> None:
        """Send each device the limit due at ``now`` if it differs from the last one sent;
        clear a limit no step holds any more before it lapsed."""
        self._forget_ended(now)
        wanted = self.desired(now)
        batches: dict[str, tuple[CommandRequest, list[str]]] = {}
        for device_id, request in wanted.items():
            if self._applied.get(device_id) != request:
                batches.setdefault(request.model_dump_json(), (request, []))[1].append(device_id)
        lifted = []
        for device_id in [d for d in self._applied if d not in wanted]:
            previous = self._applied.pop(device_id)
            if previous.expires_at is None or previous.expires_at > now:
                lifted.append(device_id)
        if lifted:
            batches["clear"] = (CLEAR, lifted)
        for request, device_ids in batches.values():
            for outcome in await submit_each(self.fleet, device_ids, request):
                if not outcome.acknowledged:
                    status = outcome.describe()
                    log.warning(
                        "openadr %s to %s: %s", request.command.value, outcome.device_id, status
                    )
            if request.command is CommandType.SET_POWER_LIMIT:
                self._applied.update(dict.fromkeys(device_ids, request))

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

    def _next_boundary(self, now: datetime) -> datetime | None:
        """The next instant after ``now`` at which a step starts or ends."""
        instants = [
            instant
            for steps in self._plans.values()
            for step in steps
            for instant in (step.start, step.end)
            if instant is not None and instant > now
        ]
        return min(instants, default=None)
