"""Charging-profile logic of the simulated OCPP chargers, as pure functions.

Profiles of both OCPP versions are parsed into one :class:`Profile`; :func:`check` says why a
charger refuses one, :func:`install` and :func:`clear` edit the installed list, and
:func:`composite_limit_kw` / :func:`composite_schedule` combine them: for every purpose the
profile with the highest stack level that is in effect prevails, and the composite is the lowest of
the station maximum, the external constraints and the transaction profile (or, without one, the
transaction default). Current limits (A) become power with ``phases * voltage_v``: kW = A x phases
x V / 1000, whatever ``numberPhases`` a period names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, cast

Unit = Literal["W", "A"]
Kind = Literal["Absolute", "Relative", "Recurring"]
Recurrency = Literal["Daily", "Weekly"]

RECURRENCY_S: dict[str, int] = {"Daily": 86_400, "Weekly": 604_800}


class Purpose(StrEnum):
    """What a profile limits, named the same for both versions."""

    STATION_MAX = "StationMax"  # 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile
    EXTERNAL = "ExternalConstraints"  # 2.0.1 ChargingStationExternalConstraints
    TX_DEFAULT = "TxDefault"  # TxDefaultProfile
    TX = "Tx"  # TxProfile


WIRE_PURPOSES: dict[str, Purpose] = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,
    "ChargingStationMaxProfile": Purpose.STATION_MAX,
    "ChargingStationExternalConstraints": Purpose.EXTERNAL,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}
"""Purpose names on the wire (either version) to :class:`Purpose`."""

STATION_PURPOSES = (Purpose.STATION_MAX, Purpose.EXTERNAL)
"""Purposes that only apply to the whole station (connector / EVSE 0)."""


class ProfileError(ValueError):
    """The CSMS sent a charging profile that cannot be read or used."""


@dataclass(frozen=True)
class Period:
    """A schedule period: ``limit`` (in the profile's unit, W or A) from ``start_s`` seconds
    after the schedule start."""

    start_s: int
    limit: float


@dataclass(frozen=True)
class Profile:
    """An installed charging profile (one schedule), version-neutral."""

    id: int
    connector_id: int  # 0 = the whole station
    purpose: Purpose
    stack_level: int
    kind: Kind
    unit: Unit
    periods: tuple[Period, ...]
    start: datetime | None = None  # schedule start of Absolute / Recurring profiles
    duration_s: int | None = None
    recurrency: Recurrency | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None


def to_kw(limit: float, unit: Unit, phases: int, voltage_v: float) -> float:
    """A limit in W or A (per phase) as kW."""
    return limit / 1000 if unit == "W" else limit * phases * voltage_v / 1000


def from_kw(power_kw: float, unit: Unit, phases: int, voltage_v: float) -> float:
    """Power in kW as W, or as A per phase."""
    return power_kw * 1000 if unit == "W" else power_kw * 1000 / (phases * voltage_v)


def _time(value: Any) -> datetime | None:
    """An OCPP date-time; one without a zone counts as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ProfileError(f"bad date-time {value!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _build(
    raw: Mapping[str, Any],
    schedule: Mapping[str, Any],
    *,
    profile_id: Any,
    connector_id: int,
    received: datetime,
) -> Profile:
    try:
        purpose = WIRE_PURPOSES[str(raw["charging_profile_purpose"])]
        kind = str(raw["charging_profile_kind"])
        unit = str(schedule["charging_rate_unit"])
        periods = tuple(
            Period(int(p["start_period"]), float(p["limit"]))
            for p in schedule["charging_schedule_period"]
        )
        stack_level = int(raw["stack_level"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"incomplete charging profile: {exc!r}") from exc
    if kind not in ("Absolute", "Relative", "Recurring") or unit not in ("W", "A"):
        raise ProfileError(f"unknown profile kind {kind!r} or rate unit {unit!r}")
    recurrency = raw.get("recurrency_kind")
    if kind == "Recurring" and recurrency not in RECURRENCY_S:
        raise ProfileError(
            f"a Recurring profile needs recurrencyKind Daily or Weekly, not {recurrency!r}"
        )
    start = _time(schedule.get("start_schedule"))
    tx = raw.get("transaction_id")
    duration = schedule.get("duration")
    return Profile(
        id=int(profile_id),
        connector_id=connector_id,
        purpose=purpose,
        stack_level=stack_level,
        kind=cast(Kind, kind),  # checked above
        unit=cast(Unit, unit),
        periods=periods,
        start=start if start is not None or kind == "Relative" else received,
        duration_s=None if duration is None else int(duration),
        recurrency=recurrency if kind == "Recurring" else None,
        valid_from=_time(raw.get("valid_from")),
        valid_to=_time(raw.get("valid_to")),
        transaction_id=None if tx is None else str(tx),
    )


def parse_v16(connector_id: int, raw: Mapping[str, Any], *, received: datetime) -> Profile:
    """An OCPP 1.6 ``csChargingProfiles`` (snake_case keys, as the ``ocpp`` library hands it
    over) for ``connector_id``; an Absolute profile without a start starts at ``received``."""
    try:
        schedule, profile_id = raw["charging_schedule"], raw["charging_profile_id"]
    except KeyError as exc:
        raise ProfileError(f"incomplete charging profile: {exc!r}") from exc
    return _build(
        raw, schedule, profile_id=profile_id, connector_id=connector_id, received=received
    )


def parse_v201(evse_id: int, raw: Mapping[str, Any], *, received: datetime) -> Profile:
    """An OCPP 2.0.1 ``chargingProfile`` (snake_case keys) for ``evse_id``; of its up to three
    schedules the first is used."""
    try:
        schedule, profile_id = raw["charging_schedule"][0], raw["id"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ProfileError(f"incomplete charging profile: {exc!r}") from exc
    return _build(raw, schedule, profile_id=profile_id, connector_id=evse_id, received=received)


def check(profile: Profile, *, connectors: int, transaction_id: str | None) -> str | None:
    """Why a charger with ``connectors`` refuses ``profile`` (None: it accepts it);
    ``transaction_id`` is the transaction running on the profile's connector, if any."""
    if not 0 <= profile.connector_id <= connectors:
        return f"unknown connector {profile.connector_id}"
    if profile.purpose in STATION_PURPOSES and profile.connector_id != 0:
        return f"{profile.purpose} only applies to connector 0"
    if profile.purpose is Purpose.TX:
        if transaction_id is None:
            return f"no transaction on connector {profile.connector_id}"
        if profile.transaction_id not in (None, transaction_id):
            return f"transaction {profile.transaction_id} is not running"
    starts = [p.start_s for p in profile.periods]
    if not starts or starts[0] != 0 or starts != sorted(set(starts)):
        return "schedule periods must start at 0 and increase"
    if any(p.limit < 0 for p in profile.periods):
        return "negative limit"
    return None


def install(profiles: Sequence[Profile], new: Profile) -> list[Profile]:
    """``profiles`` with ``new`` added, replacing one with the same id, or with the same
    purpose, stack level and connector."""
    kept = [
        p
        for p in profiles
        if p.id != new.id
        and (p.purpose, p.stack_level, p.connector_id)
        != (new.purpose, new.stack_level, new.connector_id)
    ]
    return [*kept, new]


def clear(
    profiles: Sequence[Profile],
    *,
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: Purpose | None = None,
    stack_level: int | None = None,
) -> tuple[list[Profile], list[Profile]]:
    """Split ``profiles`` into (kept, cleared): by id if given, else every profile matching all
    the criteria given (none given: all of them)."""

    def matches(p: Profile) -> bool:
        if profile_id is not None:
            return p.id == profile_id
        return (
            connector_id in (None, p.connector_id)
            and purpose in (None, p.purpose)
            and stack_level in (None, p.stack_level)
        )

    cleared = [p for p in profiles if matches(p)]
    return [p for p in profiles if not matches(p)], cleared


def _schedule_start(profile: Profile, at: datetime, relative_start: datetime) -> datetime:
    """Start of the schedule run that covers ``at`` (recurring ones repeat)."""
    if profile.kind == "Relative" or profile.start is None:
        return relative_start
    if profile.kind == "Recurring" and profile.recurrency is not None:
        period = timedelta(seconds=RECURRENCY_S[profile.recurrency])
        return profile.start + ((at - profile.start) // period) * period
    return profile.start


def limit_at(profile: Profile, at: datetime, relative_start: datetime) -> float | None:
    """The limit of ``profile`` (its unit) at ``at``, or None where it is not in effect (outside
    validity, before its start, past its duration); Relative schedules start at
    ``relative_start`` (the transaction start)."""
    if (profile.valid_from is not None and at < profile.valid_from) or (
        profile.valid_to is not None and at >= profile.valid_to
    ):
        return None
    elapsed = (at - _schedule_start(profile, at, relative_start)).total_seconds()
    if elapsed < 0 or (profile.duration_s is not None and elapsed >= profile.duration_s):
        return None
    limit = None
    for period in profile.periods:
        if period.start_s > elapsed:
            break
        limit = period.limit
    return limit


def _prevailing_kw(
    candidates: Iterable[Profile], at: datetime, relative_start: datetime, phases: int, volts: float
) -> float | None:
    """Limit (kW) of the highest-stack profile in effect among ``candidates``."""
    best: tuple[int, float] | None = None
    for p in candidates:
        limit = limit_at(p, at, relative_start)
        if limit is not None and (best is None or p.stack_level > best[0]):
            best = (p.stack_level, to_kw(limit, p.unit, phases, volts))
    return None if best is None else best[1]


def composite_limit_kw(
    profiles: Sequence[Profile],
    connector_id: int,
    at: datetime,
    *,
    tx_start: datetime | None,
    origin: datetime | None = None,
    phases: int,
    voltage_v: float,
) -> float | None:
    """The composite limit (kW) on ``connector_id`` at ``at``; None when nothing limits it.

    ``tx_start`` is the start of the transaction on the connector (None: no transaction, so no
    TxProfile applies and Relative schedules start at ``origin``, default ``at``). A
    connector's own TxDefaultProfiles override those set on connector 0.
    """
    relative_start = tx_start or origin or at

    def prevailing(purpose: Purpose, connector: int) -> float | None:
        chosen = [p for p in profiles if p.purpose is purpose and p.connector_id == connector]
        return _prevailing_kw(chosen, at, relative_start, phases, voltage_v)

    limits = [prevailing(Purpose.STATION_MAX, 0), prevailing(Purpose.EXTERNAL, 0)]
    tx = prevailing(Purpose.TX, connector_id) if tx_start is not None and connector_id else None
    if tx is None and connector_id:
        tx = prevailing(Purpose.TX_DEFAULT, connector_id)
    if tx is None:
        tx = prevailing(Purpose.TX_DEFAULT, 0)
    limits.append(tx)
    present = [limit for limit in limits if limit is not None]
    return max(0.0, min(present)) if present else None


def _boundaries(
    p: Profile, start: datetime, end: datetime, relative_start: datetime
) -> set[datetime]:
    """Moments in [start, end) where the limit of ``p`` may change."""
    runs = [_schedule_start(p, start, relative_start)]
    if p.kind == "Recurring" and p.recurrency is not None:
        step = timedelta(seconds=RECURRENCY_S[p.recurrency])
        while runs[-1] + step < end:
            runs.append(runs[-1] + step)
    moments = {m for m in (p.valid_from, p.valid_to) if m is not None}
    for run in runs:
        moments.update(run + timedelta(seconds=period.start_s) for period in p.periods)
        if p.duration_s is not None:
            moments.add(run + timedelta(seconds=p.duration_s))
    return {m for m in moments if start < m < end}


def composite_schedule(
    profiles: Sequence[Profile],
    connector_id: int,
    start: datetime,
    duration_s: int,
    *,
    tx_start: datetime | None,
    phases: int,
    voltage_v: float,
    max_kw: float,
) -> list[Period]:
    """The composite limit over ``duration_s`` from ``start``, as periods in kW (offsets in whole
    seconds from ``start``, equal neighbours merged), capped by the charger's ``max_kw``."""
    end = start + timedelta(seconds=max(duration_s, 1))
    relative_start = tx_start or start
    offsets = {0}
    for p in profiles:
        for moment in _boundaries(p, start, end, relative_start):
            offsets.add(math.ceil((moment - start).total_seconds()))
    periods: list[Period] = []
    for offset in sorted(o for o in offsets if o < max(duration_s, 1)):
        at = start + timedelta(seconds=offset)
        limit = composite_limit_kw(
            profiles,
            connector_id,
            at,
            tx_start=tx_start,
            origin=start,
            phases=phases,
            voltage_v=voltage_v,
        )
        kw = max_kw if limit is None else min(limit, max_kw)
        if not periods or periods[-1].limit != kw:
            periods.append(Period(offset, kw))
    return periods
