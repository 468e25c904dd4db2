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
from functools import cache
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

_STRUCT_CODES = {
    "int16": "h", "sunssf": "h", "uint16": "H", "count": "H", "acc16": "H", "enum16": "H",
    "bitfield16": "H", "raw16": "H", "pad": "2x", "int32": "i", "uint32": "I", "acc32": "I",
    "enum32": "I", "bitfield32": "I", "ipaddr": "I", "float32": "f", "int64": "q",
    "uint64": "Q", "acc64": "Q", "bitfield64": "Q", "float64": "d", "eui48": "8s",
    "ipv6addr": "16s",
}  # fmt: skip
"""``struct`` code of each point type (big-endian); a string of n registers is ``{2n}s``."""
_NOT_IMPLEMENTED: dict[str, int | bytes] = {
    "int16": -(1 << 15), "sunssf": -(1 << 15), "int32": -(1 << 31), "int64": -(1 << 63),
    "uint16": 0xFFFF, "count": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
    "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF,
    "uint64": (1 << 64) - 1, "bitfield64": (1 << 64) - 1,
    "acc16": 0, "acc32": 0, "acc64": 0, "ipaddr": 0, "ipv6addr": bytes(16),
}  # fmt: skip
"""The "not implemented" value of each point type, as ``struct`` unpacks it."""
_UNSCALABLE = (str, Missing)
_NUMBERS = (int, float)


def decode_model(
    model_id: int, registers: Sequence[int], points: frozenset[str] | None = None
) -> DecodedBlock:
    """Point values of model ``model_id`` from its ``registers`` (``ID``, ``L`` and ``L`` more).

    With ``points``, only those points (at any group level) are decoded, with the scale factors
    and repeat counts they need; the block is still checked whole. Scale factors come from the
    same registers, never from an earlier read. Raises ``ProtocolError`` for an unknown model, a
    register outside 0..65535, a header that does not match, a block too short for the model, a
    scale factor outside +-10, a missing or impossible repeat count, an infinite float or a
    string that is not UTF-8.
    """
    definition = model_definition(model_id)
    regs = list(registers)
    try:
        block = struct.pack(f">{len(regs)}H", *regs)
    except struct.error as exc:
        raise ProtocolError(f"model {model_id}: register value outside 0..65535") from exc
    if len(regs) < HEADER_SIZE or regs[0] != model_id:
        raise ProtocolError(f"model {model_id}: block does not start with its id: {regs[:2]}")
    if regs[1] + HEADER_SIZE != len(regs):
        raise ProtocolError(f"model {model_id}: L is {regs[1]} but {len(regs)} registers given")
    if regs[1] < definition.min_length:
        raise ProtocolError(f"model {model_id}: L {regs[1]} is below {definition.min_length}")
    values, _ = _decode_group(definition.group, regs, block, 0, (), points)
    return values


_PLAIN = frozenset(
    {"int16", "uint16", "count", "acc16", "enum16", "bitfield16", "raw16", "int32", "uint32"}
    | {"acc32", "enum32", "bitfield32", "int64", "uint64", "acc64", "bitfield64"}
)
"""Integer types whose unpacked value is the point's value (unless "not implemented")."""


@dataclass(frozen=True, slots=True)
class _Selection:
    """The points of one group to decode, each with its index in the unpacked tuple."""

    plain: tuple[tuple[str, int, int | bytes | None], ...]
    """Plain integers: name, index and "not implemented" value."""
    converted: tuple[tuple[PointDef, int], ...]
    """Points ``_raw`` converts (scale factors, floats, strings, addresses)."""
    scaled: tuple[tuple[str, str | int], ...]
    """Points with a scale factor: name and the factor (a point's name or a fixed exponent)."""


_LAYOUTS: dict[int, struct.Struct] = {}
"""Unpacker of each group's points, by group identity (definitions live as long as the process)."""
_SELECTIONS: dict[tuple[int, frozenset[str] | None], _Selection] = {}
"""Points decoded by group identity and request."""


def _layout(group: GroupDef) -> struct.Struct:
    """Unpacks one instance of ``group``'s own points (pads skipped) in one call."""
    layout = _LAYOUTS.get(id(group))
    if layout is None:
        codes = [
            f"{2 * point.size}s" if point.type == "string" else _STRUCT_CODES[point.type]
            for point in group.points
        ]
        layout = _LAYOUTS[id(group)] = struct.Struct(">" + "".join(codes))
    return layout


def _selected(group: GroupDef, wanted: frozenset[str] | None) -> _Selection:
    """The points of ``group`` to decode: all but pads, or the ``wanted`` ones with the scale
    factors and repeat counts that they and ``group``'s sub-groups need."""
    key = (id(group), wanted)
    selection = _SELECTIONS.get(key)
    if selection is None:
        needed = None if wanted is None else wanted | _needs(group, wanted)
        present = [point for point in group.points if point.type != "pad"]
        chosen = [
            (point, index)
            for index, point in enumerate(present)
            if needed is None or point.name in needed
        ]
        selection = _Selection(
            plain=tuple(
                (p.name, i, _NOT_IMPLEMENTED.get(p.type)) for p, i in chosen if p.type in _PLAIN
            ),
            converted=tuple((p, i) for p, i in chosen if p.type not in _PLAIN),
            scaled=tuple((p.name, p.sf) for p, _ in chosen if p.sf is not None),
        )
        _SELECTIONS[key] = selection
    return selection


def _needs(group: GroupDef, wanted: frozenset[str]) -> frozenset[str]:
    """Scale factors of the ``wanted`` points of ``group`` and its sub-groups (at any depth), and
    the count points its sub-groups repeat by."""
    names = {p.sf for p in group.points if p.name in wanted and isinstance(p.sf, str)}
    for sub in group.groups:
        if isinstance(sub.count, str):
            names.add(sub.count)
        names |= _needs(sub, wanted)
    return frozenset(names)


def _decode_group(
    group: GroupDef,
    regs: Sequence[int],
    block: bytes,
    start: int,
    enclosing: Scope,
    wanted: frozenset[str] | None,
) -> tuple[DecodedBlock, int]:
    """One instance of ``group`` starting at ``regs[start]``, and the index just past it.

    ``block`` is ``regs`` as big-endian bytes, unpacked a whole group instance at a time.
    """
    end = start + group.points_size
    if end > len(regs):
        raise ProtocolError(f"group {group.name} at {start} runs past the block ({len(regs)})")
    unpacked = _layout(group).unpack_from(block, 2 * start)
    selection = _selected(group, wanted)
    raw: dict[str, int | float | str | Missing] = {}
    for name, index, not_implemented in selection.plain:
        value = unpacked[index]
        raw[name] = MISSING if value == not_implemented else value
    for point, index in selection.converted:
        raw[point.name] = _raw(point, unpacked[index])
    scope: Scope = (raw, *enclosing)
    values: DecodedBlock = dict(raw)
    for name, sf in selection.scaled:
        values[name] = _scaled(name, raw[name], sf, scope)
    position = end
    for sub in group.groups:
        if not sub.repeating:
            values[sub.name], position = _decode_group(sub, regs, block, position, scope, wanted)
            continue
        instances: list[DecodedBlock] = []
        for _ in range(_repeat_count(sub, len(regs) - position, scope)):
            instance, position = _decode_group(sub, regs, block, position, scope, wanted)
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


def _raw(point: PointDef, unpacked: int | float | bytes) -> int | float | str | Missing:
    """The unscaled value of ``point`` from what ``struct`` unpacked for it, or ``MISSING`` for
    its "not implemented" value."""
    kind = point.type
    if _NOT_IMPLEMENTED.get(kind) == unpacked:
        return MISSING
    if isinstance(unpacked, int):
        if kind == "sunssf" and abs(unpacked) > SCALE_FACTOR_LIMIT:
            raise ProtocolError(
                f"{point.name}: scale factor {unpacked} is outside +-{SCALE_FACTOR_LIMIT}"
            )
        return str(ipaddress.IPv4Address(unpacked)) if kind == "ipaddr" else unpacked
    if isinstance(unpacked, float):
        if math.isnan(unpacked):
            return MISSING
        if math.isinf(unpacked):
            raise ProtocolError(f"{point.name}: {unpacked} is not a finite number")
        return unpacked
    if kind == "eui48":
        address = unpacked[2:]  # the first two bytes are padding
        return MISSING if address == b"\xff" * 6 else ":".join(f"{b:02X}" for b in address)
    if kind == "ipv6addr":
        return str(ipaddress.IPv6Address(unpacked))
    if unpacked[0] == 0:
        return MISSING
    try:
        return unpacked.split(b"\0", 1)[0].decode("utf-8").rstrip(" ")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{point.name}: string is not UTF-8: {exc}") from exc


def _scaled(
    name: str, raw: int | float | str | Missing, sf: str | int, scope: Scope
) -> DecodedValue:
    """``raw * 10**sf`` (float), the exponent ``sf`` fixed or named; ``MISSING`` if either is."""
    if isinstance(raw, _UNSCALABLE):
        return raw
    exponent = sf if isinstance(sf, int) else _lookup(scope, sf)
    if isinstance(exponent, Missing):
        return MISSING
    if not isinstance(exponent, int):
        raise ProtocolError(f"{name}: scale factor {sf} is not an integer")
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


POLLED_POINTS: dict[int, frozenset[str]] = {
    model_id: frozenset(
        {p for sources in CANONICAL_SOURCES.values() for s in sources if model_id in s.models
         for p in s.points}
        | {point for state_model, point in STATE_SOURCES if state_model == model_id}
    )
    for model_id in {m for sources in CANONICAL_SOURCES.values() for s in sources for m in s.models}
    | {model_id for model_id, _ in STATE_SOURCES}
}  # fmt: skip
"""Models whose points feed canonical telemetry, and those points (scale factors aside)."""

FieldPlan = tuple[tuple[str, tuple[tuple[int, Source], ...]], ...]
StatePlan = tuple[tuple[int, str, Mapping[int, str]], ...]


def to_canonical(
    decoded_models: Mapping[int, DecodedBlock], fields: frozenset[str] | None = None
) -> dict[str, float | str | None]:
    """Canonical telemetry fields (kW, kvar, V, A, Hz, kWh, %) from decoded models by model id.

    Every field of ``CANONICAL_SOURCES`` and ``state`` (or of those, the ones in ``fields``) is
    present; None means no source has a value.
    """
    field_plan, state_plan = _plan(frozenset(decoded_models), fields)
    values: dict[str, float | str | None] = {
        name: _first_value(sources, decoded_models) for name, sources in field_plan
    }
    if fields is None or "state" in fields:
        values["state"] = _state(state_plan, decoded_models)
    return values


@cache
def _plan(model_ids: frozenset[int], fields: frozenset[str] | None) -> tuple[FieldPlan, StatePlan]:
    """``CANONICAL_SOURCES`` (the ``fields`` asked for) and ``STATE_SOURCES`` narrowed to the
    models in ``model_ids``, in order of preference, with each state point's enum symbols."""
    field_plan = tuple(
        (name, tuple((m, source) for source in sources for m in source.models if m in model_ids))
        for name, sources in CANONICAL_SOURCES.items()
        if fields is None or name in fields
    )
    states = tuple(
        (m, point, model_definition(m).group.point(point).symbols)
        for m, point in STATE_SOURCES
        if m in model_ids
    )
    return field_plan, states


def device_info(decoded_models: Mapping[int, DecodedBlock]) -> dict[str, str | None]:
    """Manufacturer, model, serial number and firmware version from the common model (1)."""
    common = decoded_models.get(1, {})
    info: dict[str, str | None] = {}
    for field, point in DEVICE_INFO_POINTS.items():
        value = common.get(point)
        info[field] = value if isinstance(value, str) and value else None
    return info


def _first_value(
    sources: Sequence[tuple[int, Source]], decoded_models: Mapping[int, DecodedBlock]
) -> float | None:
    """The value of the first (model, source) pair that has one."""
    for model_id, source in sources:
        block = decoded_models[model_id]
        if source.group is None and len(source.points) == 1:
            value = block.get(source.points[0])
            if isinstance(value, _NUMBERS):
                return (abs(value) if source.magnitude else value) / source.per
            continue
        if source.group is None:
            values = [block.get(point) for point in source.points]
        else:
            instances = block.get(source.group)
            rows = instances if isinstance(instances, list) else []
            values = [row.get(point) for row in rows for point in source.points]
        total, count = 0.0, 0
        for value in values:
            if isinstance(value, _NUMBERS):
                total += abs(value) if source.magnitude else value
                count += 1
        if count:
            return (total if source.group else total / count) / source.per
    return None


def _state(plan: StatePlan, decoded_models: Mapping[int, DecodedBlock]) -> OperatingState | None:
    """The operating state from the first state source that holds an implemented code."""
    for model_id, point, symbols in plan:
        code = decoded_models[model_id].get(point)
        if isinstance(code, int):
            return STATE_BY_SYMBOL.get(symbols.get(code) or "", OperatingState.UNKNOWN)
    return None
