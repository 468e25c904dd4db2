"""Pure mapping of OpenADR 2.0b events (as openleadr parses them) onto DERIM power limits.

An event carries signals; each signal carries intervals with a payload. A programme's rule
reads one signal and turns each interval's payload into a limit: a percentage of each member's
rating (SIMPLE levels, percentages, fractions) or a group total in kW shared by rating. Bad
payloads raise ``SignalError``; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from derim.errors import ProtocolError
from derim.grid.openadr.config import Programme, SignalRule
from derim.models.command import CommandRequest, CommandType
from derim.models.device import DERDevice

SOURCE = "openadr"
"""The ``source`` of every command the VEN causes (its own claim in limit arbitration)."""
SI_EXPONENTS = {
    "p": -12,
    "n": -9,
    "micro": -6,
    "m": -3,
    "c": -2,
    "d": -1,
    "none": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
}
"""OpenADR ``siScaleCode`` values as powers of ten."""

Event = Mapping[str, Any]
"""An event as openleadr hands it to ``on_event``."""


class SignalError(ProtocolError):
    """An event signal that cannot be read: a payload of the wrong kind or out of range."""


@dataclass(frozen=True)
class Interval:
    """One interval of a signal: from ``start`` to ``end`` (None: until cancelled)."""

    start: datetime
    end: datetime | None
    payload: float


@dataclass(frozen=True)
class Step:
    """What each device is held to from ``start`` to ``end``; no entry: no limit."""

    start: datetime
    end: datetime | None
    requests: Mapping[str, CommandRequest]

    def active(self, now: datetime) -> bool:
        """Whether the step applies at ``now``."""
        return self.start <= now and (self.end is None or now < self.end)


def event_id(event: Event) -> str:
    """The event's identifier."""
    return str(event["event_descriptor"]["event_id"])


def programmes_for(programmes: Sequence[Programme], event: Event) -> list[Programme]:
    """The programmes an event addresses: same market context (or any), and, when the event
    targets resources, one of them."""
    context = event["event_descriptor"].get("market_context")
    targets = event.get("targets_by_type") or {}
    resources = targets.get("resource_id")
    if isinstance(resources, str):
        resources = [resources]
    return [
        p
        for p in programmes
        if (p.market_context is None or p.market_context == context)
        and (not resources or p.resource in resources)
    ]


def signal_for(programme: Programme, event: Event) -> tuple[SignalRule, Mapping[str, Any]] | None:
    """The first of the event's signals one of the programme's rules reads, with that rule."""
    signals = event.get("event_signals") or []
    for signal in signals:
        for rule in programme.signals:
            if rule.matches(str(signal.get("signal_name")), signal.get("signal_type")):
                return rule, signal
    return None


def intervals_of(event: Event, signal: Mapping[str, Any]) -> list[Interval]:
    """The signal's intervals in time order; an interval without its own start follows the
    previous one (the first starts with the event). Duration 0 runs until cancelled."""
    cursor = event["active_period"]["dtstart"]
    result = []
    for raw in signal.get("intervals") or []:
        start = raw.get("dtstart") or cursor
        duration = raw.get("duration")
        if not isinstance(start, datetime) or not isinstance(duration, timedelta):
            raise SignalError(f"interval {raw.get('uid')} has no usable start or duration")
        if duration < timedelta(0):
            raise SignalError(f"interval {raw.get('uid')} has a negative duration")
        end = None if duration == timedelta(0) else start + duration
        result.append(Interval(start, end, _number(raw.get("signal_payload"))))
        cursor = end or start
    if not result:
        raise SignalError("the signal has no intervals")
    return sorted(result, key=lambda interval: interval.start)


def limit_of(rule: SignalRule, payload: float, signal: Mapping[str, Any]) -> float | None:
    """The limit a payload asks for: % of rating, or kW for the group (``group_kw``); None:
    no limit."""
    if rule.kind == "level":
        level = int(payload)
        if level != payload or level not in rule.levels:
            raise SignalError(f"level {payload:g} is not one of {sorted(rule.levels)}")
        return rule.levels[level]
    if rule.kind == "percent":
        return _within(payload, 100.0, "%")
    if rule.kind == "fraction":
        return _within(payload, 1.0, "") * 100
    return _within(payload * _kw_per_unit(signal), math.inf, "kW")


def device_requests(
    rule: SignalRule, limit: float | None, members: Sequence[DERDevice], end: datetime | None
) -> dict[str, CommandRequest]:
    """Each member's ``set_power_limit`` for a limit, lapsing at ``end``: the same percentage
    for all, or the group's kW shared in proportion to ratings (capped at each rating)."""
    if limit is None:
        return {}
    if rule.kind != "group_kw":
        return {d.id: power_limit(limit, "%", end) for d in members}
    ratings = {d.id: d.rated_power_kw or 0.0 for d in members}
    total = sum(ratings.values())
    if total <= 0:
        return {}
    return {
        device_id: power_limit(round(min(rating, limit * rating / total), 3), "kW", end)
        for device_id, rating in ratings.items()
        if rating > 0
    }


def steps_for(
    rule: SignalRule,
    intervals: Sequence[Interval],
    signal: Mapping[str, Any],
    members: Sequence[DERDevice],
) -> list[Step]:
    """The steps of a signal for ``members``; neighbouring intervals with the same limit are
    merged into one step (one command, lapsing at the later end)."""
    merged: list[tuple[datetime, datetime | None, float | None]] = []
    for interval in intervals:
        limit = limit_of(rule, interval.payload, signal)
        if merged and merged[-1][1] == interval.start and merged[-1][2] == limit:
            merged[-1] = (merged[-1][0], interval.end, limit)
        else:
            merged.append((interval.start, interval.end, limit))
    return [
        Step(start, end, device_requests(rule, limit, members, end)) for start, end, limit in merged
    ]


def probe(steps: Sequence[Step], device: DERDevice) -> CommandRequest:
    """A dry run of the first limit the device would be given (100 % when none), to ask the
    control layer whether the device can carry it."""
    first = next((s.requests[device.id] for s in steps if device.id in s.requests), None)
    request = first or power_limit(100.0, "%", None)
    return request.model_copy(update={"dry_run": True, "expires_at": None})


def power_limit(value: float, unit: str, end: datetime | None) -> CommandRequest:
    """A ``set_power_limit`` from source ``openadr`` that lapses at ``end``."""
    return CommandRequest(
        command=CommandType.SET_POWER_LIMIT, value=value, unit=unit, source=SOURCE, expires_at=end
    )


def _number(payload: object) -> float:
    if isinstance(payload, bool) or not isinstance(payload, int | float):
        raise SignalError(f"signal payload {payload!r} is not a number")
    if not math.isfinite(payload):
        raise SignalError(f"signal payload {payload!r} is not finite")
    return float(payload)


def _within(value: float, top: float, unit: str) -> float:
    if not 0 <= value <= top:
        raise SignalError(f"signal payload {value:g}{unit} is outside 0 to {top:g}{unit}")
    return value


def _kw_per_unit(signal: Mapping[str, Any]) -> float:
    """kW per unit of the payload, from the signal's measurement (kW when it has none)."""
    measurement = signal.get("measurement")
    if not measurement:
        return 1.0
    unit, scale = measurement.get("unit"), measurement.get("scale") or "none"
    if unit != "W" or scale not in SI_EXPONENTS:
        raise SignalError(f"signal unit {unit!r} (scale {scale!r}) is not a power")
    return float(10.0 ** (SI_EXPONENTS[scale] - 3))
