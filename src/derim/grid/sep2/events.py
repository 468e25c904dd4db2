"""Which IEEE 2030.5 DER controls are in force at an instant: pure event rules, no I/O.

Times are sep2 ``TimeType`` values: whole seconds since the Unix epoch, UTC.

Rules applied (IEEE 2030.5-2018 §10.2 events and §12.1 DER function set):

- An event's *effective start* is its ``interval.start`` plus a start randomisation drawn once in
  [0, ``randomizeStart``] (or [``randomizeStart``, 0] when negative); its *effective end* is
  start + duration + that offset + a duration randomisation drawn likewise from
  ``randomizeDuration``. Draws are deterministic per (event mRID, client seed), so every poll
  of the same event agrees.
- ``Cancelled`` and ``Superseded`` events stop at once; ``CancelledWithRandomization`` stops at
  the status ``dateTime`` plus a draw in [0, max(|randomizeStart|, |randomizeDuration|)].
- Each control mode (``opModMaxLimW``, ``opModConnect``, ...) is resolved on its own. Among the
  active events carrying a mode, the program with the lowest ``primacy`` value wins; within one
  primacy the later ``creationTime`` supersedes the earlier one; the mRID breaks exact ties.
- An active event that wins none of its modes is superseded (the client's own view). Lost to a
  newer event of its own primacy, it is superseded for good: it stays terminated when the newer
  event ends (§10.2.3: within one primacy the later ``creationTime`` supersedes the older event;
  the Superseded ``EventStatus`` of the XSD: the client terminates it and runs the new one).
  Lost only to events of other primacies, it is superseded at that instant only and resumes when
  they end.
- A mode no active event sets comes from the ``DefaultDERControl`` of the program with the
  lowest primacy that carries it; defaults have no end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

ModeValue = float | bool
"""A control mode's value in DERIM units (percent, W, var, signed power factor, on/off)."""


class EventStatus(IntEnum):
    """``EventStatus.currentStatus`` as the server sends it."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4


class Phase(StrEnum):
    """Where an event stands for this client at an instant."""

    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class ControlEvent:
    """One DERControl, reduced to what the event rules need."""

    mrid: str
    primacy: int
    creation_time: int
    start: int
    duration: int
    modes: Mapping[str, ModeValue]
    randomize_start: int = 0
    randomize_duration: int = 0
    status: EventStatus = EventStatus.SCHEDULED
    status_time: int = 0


@dataclass(frozen=True)
class DefaultControl:
    """One program's DefaultDERControl: modes in force while no event sets them."""

    mrid: str
    primacy: int
    modes: Mapping[str, ModeValue]


@dataclass(frozen=True)
class Applied:
    """The value a mode has now, the event (or default) it comes from and when it ends (s)."""

    value: ModeValue
    mrid: str
    ends_at: int | None


@dataclass(frozen=True)
class Resolution:
    """Every mode in force at an instant, each event's phase then, the next instant (s) an event
    starts or ends (None when none will) and the events superseded for good (mRIDs), to be
    passed to the next ``resolve``."""

    modes: dict[str, Applied] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    next_change: int | None = None
    superseded: frozenset[str] = frozenset()


def randomized_offset(bound: int, seed: str) -> int:
    """A whole number of seconds between 0 and ``bound`` (either sign), fixed by ``seed``."""
    if bound == 0:
        return 0
    digest = hashlib.sha256(seed.encode()).digest()
    draw = int.from_bytes(digest[:8], "big") % (abs(bound) + 1)
    return draw if bound > 0 else -draw


def effective_window(event: ControlEvent, seed: str = "") -> tuple[int, int]:
    """The event's effective start and end (s) after this client's randomisation."""
    start_offset = randomized_offset(event.randomize_start, f"{event.mrid}/start/{seed}")
    duration_offset = randomized_offset(event.randomize_duration, f"{event.mrid}/duration/{seed}")
    start = event.start + start_offset
    return start, max(start, start + event.duration + duration_offset)


def _scheduled_phase(event: ControlEvent, now: int, seed: str) -> tuple[Phase, int]:
    """The phase from the event's time and status alone, and when it ends (s)."""
    start, end = effective_window(event, seed)
    if event.status in (EventStatus.CANCELLED, EventStatus.SUPERSEDED):
        phase = Phase.CANCELLED if event.status is EventStatus.CANCELLED else Phase.SUPERSEDED
        return phase, min(end, event.status_time)
    if event.status is EventStatus.CANCELLED_WITH_RANDOMIZATION:
        spread = max(abs(event.randomize_start), abs(event.randomize_duration))
        stop = event.status_time + randomized_offset(spread, f"{event.mrid}/cancel/{seed}")
        end = min(end, stop)
        if now >= end:
            return Phase.CANCELLED, end
    if now < start:
        return Phase.SCHEDULED, end
    if now >= end:
        return Phase.COMPLETED, end
    return Phase.ACTIVE, end


def _precedence(event: ControlEvent) -> tuple[int, int, str]:
    """Sort key: the first event wins (lowest primacy, then newest, then mRID)."""
    return (event.primacy, -event.creation_time, event.mrid)


def resolve(
    events: Iterable[ControlEvent],
    defaults: Sequence[DefaultControl],
    now: int,
    seed: str = "",
    superseded: frozenset[str] = frozenset(),
) -> Resolution:
    """The modes in force at ``now`` and each event's phase, under the rules above;
    ``superseded`` are the events an earlier resolution superseded for good."""
    phases: dict[str, Phase] = {}
    active: list[tuple[ControlEvent, int]] = []
    changes: list[int] = []
    final: set[str] = set()
    for event in events:
        phase, end = _scheduled_phase(event, now, seed)
        if event.mrid in superseded and phase is not Phase.CANCELLED:
            phase = Phase.SUPERSEDED
            final.add(event.mrid)
        phases[event.mrid] = phase
        if phase is Phase.ACTIVE:
            active.append((event, end))
            changes.append(end)
        elif phase is Phase.SCHEDULED:
            changes.append(effective_window(event, seed)[0])
    modes: dict[str, Applied] = {}
    winners: dict[str, ControlEvent] = {}
    for event, end in sorted(active, key=lambda pair: _precedence(pair[0])):
        for mode, value in event.modes.items():
            if mode not in modes:
                modes[mode] = Applied(value, event.mrid, end)
                winners[mode] = event
    for event, _ in active:
        if event.modes and all(winners[mode] is not event for mode in event.modes):
            phases[event.mrid] = Phase.SUPERSEDED
            if any(winners[mode].primacy == event.primacy for mode in event.modes):
                final.add(event.mrid)
    for default in sorted(defaults, key=lambda d: (d.primacy, d.mrid)):
        for mode, value in default.modes.items():
            modes.setdefault(mode, Applied(value, default.mrid, None))
    return Resolution(modes, phases, min(changes, default=None), frozenset(final))
