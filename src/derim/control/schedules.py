"""Schedules: time-ordered setpoints for a device or a group, carried out by the control layer.

Each entry sends its command at ``at`` to the schedule's device, or to every device of its
group, as source ``schedule``; an entry with ``until`` is a limit that lapses then (arbitration
restores whatever else holds). A schedule can be cancelled: entries not yet due are dropped.
Schedules are kept in the command store, so they survive restarts (entries that fell due while
DERIM was down are sent at start if still within ``LATE_GRACE_S``, else marked missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from derim.errors import DerimError
from derim.models.command import CommandRequest, CommandResult, CommandType
from derim.models.common import DeviceId, UtcDatetime
from derim.models.device import Label

log = logging.getLogger(__name__)
LATE_GRACE_S = 60.0
"""How late an entry may still be sent (after a restart, say); later ones are missed."""
MAX_ENTRIES = 1000
Submit = Callable[[str, CommandRequest], Awaitable[CommandResult]]


class EntryState(StrEnum):
    """Where a schedule entry is."""

    PENDING = "pending"
    DONE = "done"
    MISSED = "missed"
    CANCELLED = "cancelled"


class ScheduleEntry(BaseModel):
    """One setpoint: what to send, and when."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    at: UtcDatetime = Field(description="When to send it (UTC).")
    until: UtcDatetime | None = Field(None, description="When a limit lapses (UTC).")
    command: CommandType
    value: float | None = None
    unit: str = Field("kW", max_length=16)
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=32)
    state: EntryState = EntryState.PENDING
    command_ids: list[uuid.UUID] = Field(default_factory=list, description="What was sent.")
    outcome: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleEntry:
        if self.until is not None and self.until <= self.at:
            raise ValueError("until must be after at")
        return self

    def request(self) -> CommandRequest:
        """The command this entry sends."""
        return CommandRequest(
            command=self.command,
            value=self.value,
            unit=self.unit,
            parameters=self.parameters,
            source="schedule",
            expires_at=self.until,
        )


class ScheduleRequest(BaseModel):
    """A schedule to create: for one device or one group, entries in time order."""

    model_config = ConfigDict(extra="forbid")

    device_id: DeviceId | None = None
    group: Label | None = None
    name: str = Field("", max_length=128)
    entries: list[ScheduleEntry] = Field(min_length=1, max_length=MAX_ENTRIES)

    @model_validator(mode="after")
    def _one_target_in_order(self) -> ScheduleRequest:
        if (self.device_id is None) == (self.group is None):
            raise ValueError("give either device_id or group")
        times = [entry.at for entry in self.entries]
        if times != sorted(times):
            raise ValueError("entries must be in time order")
        return self


class Schedule(ScheduleRequest):
    """A schedule as stored: its id, when it was made and each entry's state."""

    schedule_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    created_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        """Whether nothing is left to send."""
        return all(entry.state is not EntryState.PENDING for entry in self.entries)


class Scheduler:
    """Sends due entries, in time order, through ``submit`` (the controller)."""

    def __init__(
        self,
        submit: Submit,
        members: Callable[[Schedule], list[str]],
        save: Callable[[Schedule], Awaitable[None]],
    ) -> None:
        self._submit = submit
        self._members = members
        self._save = save
        self._schedules: dict[uuid.UUID, Schedule] = {}
        self._changed = asyncio.Event()

    def load(self, schedules: list[Schedule]) -> None:
        """Take over schedules kept from before a restart."""
        for schedule in schedules:
            if not schedule.finished:
                self._schedules[schedule.schedule_id] = schedule
        self._changed.set()

    def add(self, schedule: Schedule) -> None:
        """Run a newly saved schedule."""
        self._schedules[schedule.schedule_id] = schedule
        self._changed.set()

    def cancel(self, schedule: Schedule) -> None:
        """Drop a schedule's entries that are not yet due."""
        schedule.cancelled = True
        for entry in schedule.entries:
            if entry.state is EntryState.PENDING:
                entry.state = EntryState.CANCELLED
        self._schedules.pop(schedule.schedule_id, None)

    def get(self, schedule_id: uuid.UUID) -> Schedule | None:
        """A running schedule (the live copy)."""
        return self._schedules.get(schedule_id)

    async def run(self) -> None:
        """Send each entry when it falls due; runs until cancelled."""
        while True:
            self._changed.clear()
            now = datetime.now(UTC)
            due = self._next_due()
            if due is not None and due <= now:
                await self._send_due(now)
                continue
            delay = None if due is None else (due - now).total_seconds()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    def _next_due(self) -> datetime | None:
        times = [
            entry.at
            for schedule in self._schedules.values()
            for entry in schedule.entries
            if entry.state is EntryState.PENDING
        ]
        return min(times, default=None)

    async def _send_due(self, now: datetime) -> None:
        for schedule in list(self._schedules.values()):
            for entry in schedule.entries:
                if entry.state is not EntryState.PENDING or entry.at > now:
                    continue
                if now - entry.at > timedelta(seconds=LATE_GRACE_S):
                    entry.state, entry.outcome = EntryState.MISSED, "fell due while DERIM was down"
                else:
                    await self._send(schedule, entry)
            await self._save(schedule)
            if schedule.finished:
                self._schedules.pop(schedule.schedule_id, None)

    async def _send(self, schedule: Schedule, entry: ScheduleEntry) -> None:
        """Send one entry to every device of the schedule; note each command and outcome."""
        outcomes = []
        for device_id in self._members(schedule):
            try:
                record = await self._submit(device_id, entry.request())
            except DerimError as exc:
                outcomes.append(f"{device_id}: {exc}")
                log.warning(
                    "schedule %s: %s refused an entry: %s", schedule.schedule_id, device_id, exc
                )
                continue
            entry.command_ids.append(record.command_id)
            outcomes.append(f"{device_id}: {record.status.value}")
        entry.state = EntryState.DONE
        entry.outcome = "; ".join(outcomes) or "no device in the group"
