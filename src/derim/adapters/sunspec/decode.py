"""Pure SunSpec decoding: one model's registers to point values, and decoded models to canonical.

``decode_model`` turns the registers of one model (from its ``ID`` register to its last) into a
dict of point values: numbers scaled by the scale factor read in the same block, strings, enum and
bitfield codes as ints, ``MISSING`` for "not implemented" sentinels, repeating groups as lists of
dicts and single sub-groups as dicts. Pads are left out. ``to_canonical`` maps decoded models to
canonical telemetry fields following the table ``CANONICAL_SOURCES``.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from derim.adapters.modbus.codec import MISSING, Missing
from derim.adapters.sunspec.models import HEADER_SIZE, GroupDef, PointDef, model_definition
from derim.errors import ProtocolError
from derim.models.common import OperatingState

DecodedValue: TypeAlias = "int | float | str | Missing | list[DecodedBlock] | DecodedBlock"
DecodedBlock: TypeAlias = "dict[str, DecodedValue]"
Scope = tuple[Mapping[str, "int | float | str | Missing"], ...]
"""Raw point values of the group being decoded, then of each enclosing group, nearest first."""

SCALE_FACTOR_LIMIT = 10
"""Largest exponent (either sign) a SunSpec scale factor (``sunssf``) may hold."""

_SIGNED = frozenset({"int16", "int32", "int64", "sunssf"})
_UNIMPLEMENTED_ZERO = frozenset({"acc16", "acc32", "acc64", "ipaddr", "ipv6addr"})
_UNIMPLEMENTED_ONES = frozenset(
    {"uint16", "uint32", "uint64", "count", "enum16", "enum32"}
    | {"bitfield16", "bitfield32", "bitfield64"}
)
_FLOATS = {"float32": ">f", "float64": ">d"}


def decode_model(model_id: int, registers: Sequence[int]) -> DecodedBlock:
    """Point values of model ``model_id`` from its ``registers`` (``ID``, ``L`` and ``L`` more).

    Scale factors come from the same registers, never from an earlier read. Raises
    ``ProtocolError`` for an unknown model, a register outside 0..65535, a header that does not
    match, a block too short for the model, a scale factor outside +-10, a missing or impossible
    repeat count, an infinite float or a string that is not UTF-8.
    """
    definition = model_definition(model_id)
    regs = list(registers)
    if not all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in regs):
        raise ProtocolError(f"model {model_id}: register value outside 0..65535")
    if len(regs) < HEADER_SIZE or regs[0] != model_id:
        raise ProtocolError(f"model {model_id}: block does not start with its id: {regs[:2]}")
    if regs[1] + HEADER_SIZE != len(regs):
        raise ProtocolError(f"model {model_id}: L is {regs[1]} but {len(regs)} registers given")
    if regs[1] < definition.min_length:
        raise ProtocolError(f"model {model_id}: L {regs[1]} is below {definition.min_length}")
    values, _ = _decode_group(definition.group, regs, struct.pack(f">{len(regs)}H", *regs), 0, ())
    return values


def _decode_group(
    group: GroupDef, regs: Sequence[int], block: bytes, start: int, enclosing: Scope
) -> tuple[DecodedBlock, int]:
    """One instance of ``group`` starting at ``regs[start]``, and the index just past it.

    ``block`` is ``regs`` as big-endian bytes, so each point is a slice, not a conversion.
    """
    end = start + group.points_size
    if end > len(regs):
        raise ProtocolError(f"group {group.name} at {start} runs past the block ({len(regs)})")
    points = [point for point in group.points if point.type != "pad"]
    raw = {
        p.name: _raw(p, block[2 * (start + p.offset) : 2 * (start + p.offset + p.size)])
        for p in points
    }
    scope: Scope = (raw, *enclosing)
    values: DecodedBlock = {point.name: _scaled(point, raw[point.name], scope) for point in points}
    position = end
    for sub in group.groups:
        if not sub.repeating:
            values[sub.name], position = _decode_group(sub, regs, block, position, scope)
            continue
        instances: list[DecodedBlock] = []
        for _ in range(_repeat_count(sub, len(regs) - position, scope)):
            instance, position = _decode_group(sub, regs, block, position, scope)
            instances.append(instance)
        values[sub.name] = instances
    return values, position


def _repeat_count(group: GroupDef, remaining: int, scope: Scope) -> int:
    """How many instances of the repeating ``group`` follow, with ``remaining`` registers left."""
    if isinstance(group.count, str):
        count = _lookup(scope, group.count)
        if not isinstance(count, int):
            raise ProtocolError(f"group {group.name}: count {group.count} is not implemented")
        return count
    if group.count == 0:
        if remaining % group.points_size:
            raise ProtocolError(
                f"group {group.name}: {remaining} registers are not a multiple of"
                f" {group.points_size}"
            )
        return remaining // group.points_size
    return group.count or 0


def _lookup(scope: Scope, name: str) -> int | float | str | Missing:
    """Raw value of point ``name`` in the nearest group of ``scope`` that has it."""
    for raw in scope:
        if name in raw:
            return raw[name]
    raise ProtocolError(f"no point {name!r} in scope")


def _raw(point: PointDef, data: bytes) -> int | float | str | Missing:
    """The unscaled value of ``point`` held in ``data`` (its registers, big-endian), or
    ``MISSING`` for its sentinel."""
    unsigned = int.from_bytes(data, "big")
    bits = 16 * point.size
    if point.type == "string":
        if data[0] == 0:
            return MISSING
        try:
            return data.split(b"\0", 1)[0].decode("utf-8").rstrip(" ")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{point.name}: string is not UTF-8: {exc}") from exc
    if point.type in _FLOATS:
        number = float(struct.unpack(_FLOATS[point.type], data)[0])
        if math.isnan(number):
            return MISSING
        if math.isinf(number):
            raise ProtocolError(f"{point.name}: {number} is not a finite number")
        return number
    if point.type in _UNIMPLEMENTED_ZERO and unsigned == 0:
        return MISSING
    if point.type in _UNIMPLEMENTED_ONES and unsigned == (1 << bits) - 1:
        return MISSING
    if point.type == "eui48":
        address = data[2:]  # the first two bytes are padding
        return MISSING if address == b"\xff" * 6 else ":".join(f"{b:02X}" for b in address)
    if point.type == "ipaddr":
        return str(ipaddress.IPv4Address(unsigned))
    if point.type == "ipv6addr":
        return str(ipaddress.IPv6Address(unsigned))
    if point.type not in _SIGNED:
        return unsigned
    if unsigned == 1 << (bits - 1):
        return MISSING
    value = unsigned - (1 << bits) if unsigned >> (bits - 1) else unsigned
    if point.type == "sunssf" and abs(value) > SCALE_FACTOR_LIMIT:
        raise ProtocolError(f"{point.name}: scale factor {value} is outside +-{SCALE_FACTOR_LIMIT}")
    return value


def _scaled(point: PointDef, raw: int | float | str | Missing, scope: Scope) -> DecodedValue:
    """``raw * 10**sf`` (float) for a scaled point, else ``raw``; ``MISSING`` if either is."""
    if point.sf is None or isinstance(raw, str | Missing):
        return raw
    exponent = point.sf if isinstance(point.sf, int) else _lookup(scope, point.sf)
    if isinstance(exponent, Missing):
        return MISSING
    if not isinstance(exponent, int):
        raise ProtocolError(f"{point.name}: scale factor {point.sf} is not an integer")
    # Dividing by an exact power of ten keeps 2301 * 10**-1 at 230.1 rather than 230.10000000000002.
    return float(raw * 10**exponent) if exponent >= 0 else raw / 10**-exponent


INVERTER_MODELS = (101, 102, 103, 111, 112, 113)
"""Inverter models: single, split and three phase, with integer+scale factor or float32 points."""
KILO = 1000.0


@dataclass(frozen=True, slots=True)
class Source:
    """Where a canonical value comes from: ``points`` of the first of ``models`` that has them.

    The value is the mean of the points present (phase values), or with ``group`` the sum of the
    points over the instances of that repeating group; then divided by ``per`` (1000: W -> kW),
    as a magnitude when ``magnitude`` is set.
    """

    models: tuple[int, ...]
    points: tuple[str, ...]
    per: float = 1.0
    group: str | None = None
    magnitude: bool = False


CANONICAL_SOURCES: dict[str, tuple[Source, ...]] = {
    "power_kw": (
        Source((701,), ("W",), KILO),
        Source(INVERTER_MODELS, ("W",), KILO),
        Source((802,), ("W",), KILO),
    ),
    "reactive_power_kvar": (
        Source((701,), ("Var",), KILO),
        Source(INVERTER_MODELS, ("VAr",), KILO),
    ),
    "voltage_v": (
        Source((701,), ("LNV",)),
        Source(INVERTER_MODELS, ("PhVphA", "PhVphB", "PhVphC")),
        Source((701,), ("LLV",)),
        Source(INVERTER_MODELS, ("PPVphAB",)),
    ),
    "current_a": (
        Source((701,), ("AL1", "AL2", "AL3"), magnitude=True),
        Source(INVERTER_MODELS, ("AphA", "AphB", "AphC")),
    ),
    "frequency_hz": (Source((701,), ("Hz",)), Source(INVERTER_MODELS, ("Hz",))),
    "energy_kwh": (Source((701,), ("TotWhInj",), KILO), Source(INVERTER_MODELS, ("WH",), KILO)),
    "dc_power_kw": (
        Source((160,), ("DCW",), KILO, group="module"),
        Source(INVERTER_MODELS, ("DCW",), KILO),
    ),
    "soc_percent": (
        Source((802,), ("SoC",)),
        Source((713,), ("SoC",)),
        Source((124,), ("ChaState",)),
    ),
    "soh_percent": (Source((802,), ("SoH",)), Source((713,), ("SoH",))),
    "charge_rate_kw": (
        Source((124,), ("WChaMax",), KILO),
        Source((802,), ("WChaRteMax",), KILO),
        Source((702,), ("WChaRteMax",), KILO),
    ),
}
"""Canonical SolarTelemetry / BatteryTelemetry field -> its sources, the first with a value wins.

SunSpec inverter, DER (701) and battery (802) power is positive when delivered to the grid (for a
battery: discharging), which is already the system's sign convention.
"""

STATE_SOURCES: tuple[tuple[int, str], ...] = (
    (701, "InvSt"),
    *((model_id, "St") for model_id in INVERTER_MODELS),
    (802, "ChaSt"),
    (124, "ChaSt"),
    (701, "St"),
)
"""Enum points giving the operating state, the first with a value wins."""

STATE_BY_SYMBOL: dict[str, OperatingState] = {
    "OFF": OperatingState.OFF,
    "SLEEPING": OperatingState.SLEEPING,
    "STARTING": OperatingState.STARTING,
    "MPPT": OperatingState.ON,
    "RUNNING": OperatingState.ON,
    "ON": OperatingState.ON,
    "THROTTLED": OperatingState.THROTTLED,
    "SHUTTING_DOWN": OperatingState.SHUTTING_DOWN,
    "FAULT": OperatingState.FAULT,
    "STANDBY": OperatingState.STANDBY,
    "CHARGING": OperatingState.CHARGING,
    "DISCHARGING": OperatingState.DISCHARGING,
    "EMPTY": OperatingState.IDLE,
    "FULL": OperatingState.IDLE,
    "HOLDING": OperatingState.IDLE,
}
"""SunSpec enum symbol name -> operating state; a code without an entry is ``UNKNOWN``."""

DEVICE_INFO_POINTS: dict[str, str] = {
    "manufacturer": "Mn",
    "model": "Md",
    "serial_number": "SN",
    "firmware_version": "Vr",
}
"""Device registry field -> point of the common model (1)."""


def to_canonical(decoded_models: Mapping[int, DecodedBlock]) -> dict[str, float | str | None]:
    """Canonical telemetry fields (kW, kvar, V, A, Hz, kWh, %) from decoded models by model id.

    Every field of ``CANONICAL_SOURCES`` and ``state`` is present; None means no source has a value.
    """
    fields: dict[str, float | str | None] = {
        name: _first_value(sources, decoded_models) for name, sources in CANONICAL_SOURCES.items()
    }
    fields["state"] = _state(decoded_models)
    return fields


def device_info(decoded_models: Mapping[int, DecodedBlock]) -> dict[str, str | None]:
    """Manufacturer, model, serial number and firmware version from the common model (1)."""
    common = decoded_models.get(1, {})
    info: dict[str, str | None] = {}
    for field, point in DEVICE_INFO_POINTS.items():
        value = common.get(point)
        info[field] = value if isinstance(value, str) and value else None
    return info


def _number(value: DecodedValue | None) -> float | None:
    """``value`` as a float when it is a number, else None."""
    return float(value) if isinstance(value, int | float) else None


def _first_value(
    sources: Sequence[Source], decoded_models: Mapping[int, DecodedBlock]
) -> float | None:
    """The value of the first source, and the first of its models, that has one."""
    for source in sources:
        for model_id in source.models:
            block = decoded_models.get(model_id)
            if block is None:
                continue
            if source.group is None:
                numbers = [_number(block.get(point)) for point in source.points]
            else:
                instances = block.get(source.group)
                rows = instances if isinstance(instances, list) else []
                numbers = [_number(row.get(point)) for row in rows for point in source.points]
            present = [abs(n) if source.magnitude else n for n in numbers if n is not None]
            if present:
                total = sum(present) if source.group else sum(present) / len(present)
                return total / source.per
    return None


def _state(decoded_models: Mapping[int, DecodedBlock]) -> OperatingState | None:
    """The operating state from the first state source that holds an implemented code."""
    for model_id, point in STATE_SOURCES:
        code = decoded_models.get(model_id, {}).get(point)
        if isinstance(code, int):
            symbol = model_definition(model_id).group.point(point).symbols.get(code)
            return STATE_BY_SYMBOL.get(symbol or "", OperatingState.UNKNOWN)
    return None
