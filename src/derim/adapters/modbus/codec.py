"""Pure Modbus codec: read planning, register decoding, scaling and control encoding; no I/O.

A register image is the answer to a read plan: a mapping from each ``ReadRequest`` to the register
values (0..65535) the device returned for it. Decoders raise ``ProtocolError`` on anything they
cannot decode; a value the device reports as not implemented is ``MISSING`` (``None`` once it is a
canonical field). An enum code missing from its point's map reads as unknown and is reported, so
the caller can flag the reading instead of losing the whole poll.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

from pymodbus.client.mixin import ModbusClientMixin

from derim.adapters.modbus.profile import (
    INTEGER_RANGES,
    ControlPoint,
    Point,
    Profile,
    RegisterSpan,
    RegisterType,
)
from derim.errors import ConfigError, InvalidRequestError, ProtocolError
from derim.models.telemetry import ENUM_FIELDS, telemetry_fields

_DT = ModbusClientMixin.DATATYPE
_DATATYPES = {
    "u16": _DT.UINT16,
    "s16": _DT.INT16,
    "u32": _DT.UINT32,
    "s32": _DT.INT32,
    "u64": _DT.UINT64,
    "s64": _DT.INT64,
    "f32": _DT.FLOAT32,
    "f64": _DT.FLOAT64,
    "string": _DT.STRING,
}
_UNSIGNED = {1: _DT.UINT16, 2: _DT.UINT32, 4: _DT.UINT64}
SCALE_FACTOR_LIMIT = 20
"""Largest power-of-ten exponent (either sign) accepted from a scale-factor register."""


class Missing(Enum):
    """Type of ``MISSING``: the device reports the value as not implemented."""

    MISSING = "missing"


MISSING = Missing.MISSING
Raw = int | float | str
FieldValue = int | float | str | None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers of ``register_type`` from ``address`` on ``unit_id``.

    ``unit_id`` None means the unit id of the device's connection.
    """

    register_type: RegisterType
    unit_id: int | None
    address: int
    count: int

    @property
    def end(self) -> int:
        """Address just past the last register read."""
        return self.address + self.count


RegisterImage = Mapping[ReadRequest, Sequence[int]]
"""Register values returned for each request of a read plan."""


def plan_reads(
    points: Iterable[RegisterSpan], max_registers: int, max_gap: int
) -> list[ReadRequest]:
    """Coalesce ``points`` into the fewest reads per register type and unit id.

    A request spans at most ``max_registers`` registers, bridges gaps of at most ``max_gap`` unused
    registers and never splits a point. Raises ``ConfigError`` for a point wider than a request.
    """
    groups: dict[tuple[RegisterType, int | None], list[RegisterSpan]] = {}
    for point in points:
        if point.count > max_registers:
            raise ConfigError(f"point {point.name!r} is wider than {max_registers} registers")
        groups.setdefault((point.register_type, point.unit_id), []).append(point)
    requests: list[ReadRequest] = []
    for (register_type, unit_id), group in groups.items():
        group.sort(key=lambda span: span.address)
        start, end = group[0].address, group[0].address
        for span in group:
            new_end = max(end, span.address + span.count)
            if span.address - end > max_gap or new_end - start > max_registers:
                requests.append(ReadRequest(register_type, unit_id, start, end - start))
                start, new_end = span.address, span.address + span.count
            end = new_end
        requests.append(ReadRequest(register_type, unit_id, start, end - start))
    return requests


def _swap_bytes(register: int) -> int:
    """``register`` with its two bytes exchanged."""
    return ((register & 0xFF) << 8) | (register >> 8)


def decode_point(registers: Sequence[int], point: RegisterSpan) -> Raw | Missing:
    """The raw value (before scaling) held in ``registers``, exactly the point's registers.

    Returns ``MISSING`` for a ``not_implemented`` bit pattern. Raises ``ProtocolError`` for a wrong
    register count, a register outside 0..65535, a NaN or infinite float or an undecodable string.
    """
    if len(registers) != point.count:
        raise ProtocolError(f"{point.name}: expected {point.count} registers, got {len(registers)}")
    if not all(0 <= register <= 0xFFFF for register in registers):
        raise ProtocolError(f"{point.name}: register value outside 0..65535 in {list(registers)}")
    regs = [_swap_bytes(r) for r in registers] if point.byte_order == "little" else list(registers)
    convert = ModbusClientMixin.convert_from_registers
    if point.data_type == "string":
        try:
            text = cast(str, convert(regs, _DT.STRING, point.word_order))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{point.name}: string is not UTF-8: {exc}") from exc
        return text.split("\x00", 1)[0].rstrip(" ")
    if isinstance(point, Point) and point.not_implemented:
        pattern = convert(regs, _UNSIGNED[point.count], point.word_order)
        if pattern in point.not_implemented:
            return MISSING
    value = cast(int | float, convert(regs, _DATATYPES[point.data_type], point.word_order))
    if not math.isfinite(value):
        raise ProtocolError(f"{point.name}: {value} is not a finite number")
    return value


def decode_block(
    request: ReadRequest, registers: Sequence[int], points: Iterable[RegisterSpan]
) -> dict[str, Raw | Missing]:
    """Raw values of the ``points`` that lie inside ``request``, decoded from its ``registers``.

    Raises ``ProtocolError`` when the device returned a different number of registers than asked.
    """
    if len(registers) != request.count:
        raise ProtocolError(f"{request}: expected {request.count} registers, got {len(registers)}")
    values: dict[str, Raw | Missing] = {}
    for point in points:
        inside = request.address <= point.address and point.address + point.count <= request.end
        if inside and (point.register_type, point.unit_id) == (
            request.register_type,
            request.unit_id,
        ):
            first = point.address - request.address
            values[point.name] = decode_point(registers[first : first + point.count], point)
    return values


def apply_scale(
    raw: int | float | Missing,
    scale: float,
    scale_factor_value: int | Missing | None = None,
    offset: float = 0.0,
) -> float | Missing:
    """``raw * scale * 10**scale_factor_value + offset``; ``MISSING`` if raw or the factor is.

    A factor below 1 whose inverse is a whole number divides instead, so decimals come out exact.

    ``scale_factor_value`` None means the point has no scale factor. Raises ``ProtocolError`` for a
    factor beyond +-``SCALE_FACTOR_LIMIT`` or a result that is not finite.
    """
    if raw is MISSING or scale_factor_value is MISSING:
        return MISSING
    exponent = scale_factor_value or 0
    if abs(exponent) > SCALE_FACTOR_LIMIT:
        raise ProtocolError(f"scale factor {exponent} is outside +-{SCALE_FACTOR_LIMIT}")
    factor = scale * 10.0**exponent
    exact = 1e-15 < abs(factor) < 1 and math.isclose(1 / factor, round(1 / factor), rel_tol=1e-12)
    if exact:
        divisor = round(1 / factor)
        # Dividing by an exact integer keeps -950 * 0.001 at -0.95, not -0.9500000000000001.
        value = raw / divisor + offset
    else:
        value = raw * factor + offset
    if not math.isfinite(value):
        raise ProtocolError(f"scaled value of {raw} is not a finite number")
    return value


@dataclass(frozen=True, slots=True)
class DecodedReading:
    """One poll's canonical field values, and the enum codes the profile does not map."""

    fields: dict[str, FieldValue]
    unmapped: dict[str, int]
    """Point name -> raw code missing from the point's enum map (its field reads as unknown)."""


def _unknown_value(field_name: str) -> str | None:
    """What enum field ``field_name`` reads for an unmapped code: its enumeration's ``unknown``.

    ``ConnectorStatus`` has no unknown member (OCPP defines none), so its field is left out (None)
    rather than claiming a status such as ``unavailable`` the device never reported.
    """
    member = ENUM_FIELDS[field_name].__members__.get("UNKNOWN")
    return None if member is None else member.value


def decode_reading(profile: Profile, image: RegisterImage) -> DecodedReading:
    """Canonical field values of ``profile`` decoded from one poll's register ``image``.

    Scale factors come from the same image, never from an earlier poll. A value reported as not
    implemented, or scaled by a factor that is, becomes None; an enum code missing from its map
    reads as ``unknown`` (None for a connector status, which has no such member) and is listed in
    ``unmapped``. Raises ``ProtocolError`` when the image lacks a needed register or holds an
    undecodable value.
    """
    raw: dict[str, Raw | Missing] = {}
    for request, registers in image.items():
        raw = decode_block(request, registers, profile.points) | raw
    kinds = telemetry_fields()
    fields: dict[str, FieldValue] = {}
    unmapped: dict[str, int] = {}
    for point in profile.points:
        if point.field is None:
            continue
        value = _lookup(raw, point.name)
        if value is MISSING:
            fields[point.field] = None
        elif point.enum is not None:
            code = cast(int, value)
            if code in point.enum:
                fields[point.field] = point.enum[code]
            else:
                fields[point.field] = _unknown_value(point.field)
                unmapped[point.name] = code
        elif isinstance(value, str) or kinds[point.field] is int:
            fields[point.field] = value
        else:
            factor = None if point.scale_factor is None else _lookup(raw, point.scale_factor)
            scaled = apply_scale(
                value, point.scale, cast(int | Missing | None, factor), point.offset
            )
            fields[point.field] = None if scaled is MISSING else scaled
    return DecodedReading(fields, unmapped)


def _lookup(raw: Mapping[str, Raw | Missing], name: str) -> Raw | Missing:
    """The raw value of point ``name``; ``ProtocolError`` if the image did not cover it."""
    if name not in raw:
        raise ProtocolError(f"the register image does not cover point {name!r}")
    return raw[name]


def encode_write(point: ControlPoint, value: float | str) -> list[int]:
    """Registers to write to set ``point`` to ``value`` (in ``point.unit``, or a choice word).

    Raises ``InvalidRequestError`` naming the point and the limit or the accepted choices.
    """
    raw: int | float
    if point.choices is not None:
        if not isinstance(value, str) or value not in point.choices:
            raise InvalidRequestError(point.name, f"must be one of {sorted(point.choices)}")
        raw = point.choices[value]
    else:
        if isinstance(value, str | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidRequestError(point.name, f"{value!r} is not a finite number")
        unit = f" {point.unit}" if point.unit else ""
        if point.min is not None and value < point.min:
            raise InvalidRequestError(
                point.name, f"{value}{unit} is below the minimum {point.min}{unit}"
            )
        if point.max is not None and value > point.max:
            raise InvalidRequestError(
                point.name, f"{value}{unit} is above the maximum {point.max}{unit}"
            )
        raw = (value - point.offset) / point.scale
        if point.data_type in INTEGER_RANGES:
            raw = round(raw)
    datatype = _DATATYPES[point.data_type]
    registers = ModbusClientMixin.convert_to_registers(raw, datatype, point.word_order)
    return [_swap_bytes(r) for r in registers] if point.byte_order == "little" else registers
