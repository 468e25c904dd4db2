"""Pure conversion between MMS values (as the client hands them over) and canonical values.

Every function here either returns a value or raises ``ProtocolError``: a value of the wrong
kind, a non-finite number or a malformed quality is the IED's fault, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from derim.adapters.iec61850.profile import ControlPoint, Point, Profile, ReadFc
from derim.errors import ConfigError, InvalidRequestError, ProtocolError
from derim.models.common import Quality
from derim.models.telemetry import ENUM_FIELDS

READ_BACK_TOLERANCE = 1e-6
"""Relative (and absolute) difference always allowed between a written and a read-back value:
FLOAT32 keeps about seven significant digits. A control's ``tolerance`` may allow more."""

QUALITY_BYTES = 2
"""An IEC 61850 quality is a 13-bit MMS BIT STRING: two bytes, bit 0 the first byte's MSB."""
_VALIDITY_SHIFT = 6
_INVALID, _RESERVED, _QUESTIONABLE = 0b01, 0b10, 0b11
"""Validity (bits 0-1): 00 good, 01 invalid, 10 reserved, 11 questionable."""
_SUBSTITUTED = 0x20
_TEST = 0x10
"""Second byte: bit 10 source = substituted, bit 11 test."""

UNKNOWN = "unknown"
"""What an enum field reads when the IED sends an ordinal the profile does not map."""

_RANK = {Quality.GOOD: 0, Quality.SUBSTITUTED: 1, Quality.QUESTIONABLE: 2, Quality.INVALID: 3}


@dataclass(frozen=True, slots=True)
class AccessFailure:
    """The IED refused to read one attribute (``ObjectNonExistent``, ...)."""

    error: str


@dataclass(slots=True)
class DecodedReading:
    """Canonical values of one poll, the reading's quality and what went wrong per point."""

    fields: dict[str, object] = field(default_factory=dict)
    quality: Quality = Quality.GOOD
    problems: dict[str, str] = field(default_factory=dict)
    """Point name -> why its value is missing or unknown (the reading is questionable then)."""


def decode_quality(raw: object) -> Quality:
    """The canonical quality of an IEC 61850 ``q`` attribute (validity, substitution, test)."""
    if not isinstance(raw, bytes) or len(raw) != QUALITY_BYTES:
        raise ProtocolError(f"a quality is {QUALITY_BYTES} bytes, not {raw!r:.40}")
    validity = raw[0] >> _VALIDITY_SHIFT
    if validity == _INVALID:
        return Quality.INVALID
    if validity in (_QUESTIONABLE, _RESERVED) or raw[1] & _TEST:
        return Quality.QUESTIONABLE
    return Quality.SUBSTITUTED if raw[1] & _SUBSTITUTED else Quality.GOOD


def worse(a: Quality, b: Quality) -> Quality:
    """The worse of two qualities (good < substituted < questionable < invalid)."""
    return a if _RANK[a] >= _RANK[b] else b


def decode_point(point: Point, raw: object) -> float | int | str:
    """The engineering value of ``raw`` for ``point`` (an enum's raw ordinal is returned as is)."""
    if point.type == "string":
        if not isinstance(raw, str):
            raise ProtocolError(f"{point.name}: expected a string, got {_kind(raw)}")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ProtocolError(f"{point.name}: expected a number, got {_kind(raw)}")
    if point.type == "int":
        if not isinstance(raw, int):
            raise ProtocolError(f"{point.name}: expected an integer, got {_kind(raw)}")
        if point.unscaled:
            return raw
    try:
        value = float(raw) * point.scale + point.offset
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ProtocolError(f"{point.name}: value {raw!r:.40} is not a finite number")
    return value


def decode_reading(
    profile: Profile, values: Mapping[str, object], qualities: Mapping[str, object]
) -> DecodedReading:
    """One poll's canonical fields from raw values by point name and raw ``q`` by reference.

    A point the IED refused to read, or whose quality is invalid (its value, however
    malformed, is then not looked at), is left out; an enum ordinal
    the profile does not map reads as unknown (left out if the field has no unknown value).
    Either makes the reading questionable and is named in ``problems``. A value of the wrong
    kind raises ``ProtocolError``; so does a poll in which every point is missing.
    """
    reading = DecodedReading()
    missing = 0
    for point in profile.points:
        raw = values.get(point.name)
        if isinstance(raw, AccessFailure) or point.name not in values:
            reading.problems[point.name] = raw.error if isinstance(raw, AccessFailure) else "absent"
            missing += 1
            continue
        quality = _point_quality(point, qualities)
        if quality is Quality.INVALID:  # whatever the IED sent as its value is not decoded
            reading.problems[point.name] = "quality invalid"
            missing += 1
            continue
        value = decode_point(point, raw)
        reading.quality = worse(reading.quality, quality)
        if point.field is None:
            continue
        if point.enum is not None and isinstance(value, int):
            if value not in point.enum:
                reading.problems[point.name] = f"ordinal {value} is not in the enum map"
                if UNKNOWN not in {m.value for m in ENUM_FIELDS[point.field]}:
                    continue
            value = point.enum.get(value, UNKNOWN)
        reading.fields[point.field] = value
    if missing == len(profile.points):
        shown = "; ".join(f"{name}: {why}" for name, why in reading.problems.items())
        raise ProtocolError(f"no point could be read: {shown}")
    if reading.problems:
        reading.quality = worse(reading.quality, Quality.QUESTIONABLE)
    return reading


def _point_quality(point: Point, qualities: Mapping[str, object]) -> Quality:
    if point.quality is None:
        return Quality.GOOD
    raw = qualities.get(point.quality)
    if isinstance(raw, AccessFailure) or raw is None:
        return Quality.QUESTIONABLE
    return decode_quality(raw)


def encode_setpoint(control: ControlPoint, value: object) -> float | int | bool:
    """The value written to ``control`` for ``value`` (a number in its unit, or a choice
    word); ``InvalidRequestError`` when outside its limits or not one of its choices."""
    if control.choices is not None:
        if not isinstance(value, str) or value not in control.choices:
            raise InvalidRequestError(
                "parameters.choice", f"{control.name} takes one of {sorted(control.choices)}"
            )
        return control.choices[value]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError("value", f"{control.name} takes a number")
    if control.min is None or control.max is None:  # ControlPoint's validator prevents this
        raise ConfigError(f"{control.name} has neither choices nor both min and max")
    if not control.min <= value <= control.max:
        raise InvalidRequestError(
            "value",
            f"{value} {control.unit} is outside {control.name}'s minimum {control.min} and "
            f"maximum {control.max} {control.unit}",
        )
    raw = (value - control.offset) / control.scale
    if control.type == "int":
        return round(raw)
    return raw


def read_back_matches(control: ControlPoint, written: float | int | bool, echoed: object) -> bool:
    """Whether the setpoint read back (``echoed``) holds the value written, within FLOAT32
    rounding or within the control's ``tolerance`` (given in its unit, compared after
    scaling)."""
    if isinstance(written, bool) or isinstance(echoed, bool):
        return written is echoed
    if not isinstance(echoed, int | float):
        return False
    if math.isclose(echoed, written, rel_tol=READ_BACK_TOLERANCE, abs_tol=READ_BACK_TOLERANCE):
        return True
    return control.tolerance is not None and (
        abs(echoed - written) * abs(control.scale) <= control.tolerance
    )


def read_targets(profile: Profile) -> list[tuple[str, ReadFc]]:
    """What one poll reads, without the IED name: each point's (reference, FC), then each
    distinct quality attribute's."""
    targets: list[tuple[str, ReadFc]] = [(point.ref, point.fc) for point in profile.points]
    qualities = {p.quality: p.fc for p in profile.points if p.quality is not None}
    return targets + list(qualities.items())


def split_read(
    profile: Profile, raw: Sequence[object]
) -> tuple[dict[str, object], dict[str, object]]:
    """One read of ``read_targets(profile)`` as raw values by point name and raw qualities by
    reference."""
    targets = read_targets(profile)
    if len(raw) != len(targets):
        raise ProtocolError(f"asked for {len(targets)} values, got {len(raw)}")
    count = len(profile.points)
    values = {point.name: value for point, value in zip(profile.points, raw, strict=False)}
    qualities = {ref: value for (ref, _), value in zip(targets[count:], raw[count:], strict=True)}
    return values, qualities


def _kind(raw: object) -> str:
    return f"{type(raw).__name__} {raw!r:.40}"
