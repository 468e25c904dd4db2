"""Types shared by the canonical models: identifiers, UTC timestamps, enumerations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
MAX_ID_LENGTH = 128

DeviceId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
"""A device identifier: 1-128 characters of letters, digits and ``. _ : @ -``, starting alnum."""


def to_utc(value: datetime) -> datetime:
    """Return the same instant in UTC; a naive datetime is taken to be UTC already.

    Raises ``ValueError`` when the instant falls outside years 1-9999 once in UTC (such as
    ``0001-01-01T00:00:00+01:00``).
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the instant is outside years 1-9999 in UTC") from exc


UtcDatetime = Annotated[datetime, AfterValidator(to_utc)]
"""A timestamp normalised to UTC. Offsets are honoured; naive values are read as UTC."""

BIDI_CONTROLS = frozenset(
    ["\u061c", "\u200e", "\u200f"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)
"""Characters that reorder how text is displayed (the "Trojan Source" trick): a name holding
one can show as something other than what it is."""


def printable(value: str) -> str:
    """``value`` unchanged; ``ValueError`` if it holds a control character (C0, DEL, C1:
    NUL, newline, escape, ...) or a bidirectional control."""
    for char in value:
        if char < " " or "\x7f" <= char <= "\x9f" or char in BIDI_CONTROLS:
            raise ValueError(f"control character U+{ord(char):04X} is not allowed")
    return value


Text = Annotated[str, AfterValidator(printable)]
"""Free text shown to people or handed to other systems (names, hosts, paths): any printable
Unicode, emoji and every script included, but no control or bidirectional-control character."""


class DeviceType(StrEnum):
    """The kind of distributed energy resource."""

    SOLAR_PV = "solar_pv"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    METER = "meter"
    LOAD = "load"
    WIND = "wind"
    GENERIC = "generic"


class Quality(StrEnum):
    """Data quality of a reading, after IEC 61850 ``q`` validity plus a substitution flag."""

    GOOD = "good"
    QUESTIONABLE = "questionable"
    INVALID = "invalid"
    SUBSTITUTED = "substituted"


class OperatingState(StrEnum):
    """Operating state of a device, after SunSpec ``St`` and IEEE 2030.5 ``inverterStatus``."""

    OFF = "off"
    SLEEPING = "sleeping"
    STARTING = "starting"
    ON = "on"
    THROTTLED = "throttled"
    SHUTTING_DOWN = "shutting_down"
    FAULT = "fault"
    STANDBY = "standby"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    IDLE = "idle"
    UNKNOWN = "unknown"


class ConnectorStatus(StrEnum):
    """EV connector status: the union of OCPP 1.6 ``ChargePointStatus`` and 2.0.1 states."""

    AVAILABLE = "available"
    PREPARING = "preparing"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    FINISHING = "finishing"
    OCCUPIED = "occupied"
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"
