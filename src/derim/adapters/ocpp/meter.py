"""Pure mapping of OCPP MeterValues to canonical EV-charger telemetry; no I/O.

``readings_v16`` and ``readings_v201`` take the ``meter_value`` list of a MeterValues request (or
StopTransaction ``transaction_data``, TransactionEvent ``meter_value``) as the ``ocpp`` library
hands it to a handler (snake_case keys, enum values as the spec's strings). They return one
``EVChargerTelemetry`` per distinct timestamp that yields at least one value, and one problem line
per sampled value left out. A structurally broken list raises ``ProtocolError``; a single bad
sampled value never does.

Defaults: no measurand is the active import register, no unit the measurand's natural unit (Wh for
energy), no location the Outlet. Electrical values come from the Outlet, from the Inlet only when
the Outlet lacks that measurand; temperature from the Outlet, EV, cable, body or inlet (the first
present); SoC from any location, the EV first. A phase-less value wins over per-phase values, which
are otherwise summed (power, energy) or averaged (current, voltage, frequency, ...). Line-to-line
voltages count, divided by sqrt 3 (L1-L2 as L1, L2-L3 as L2, L3-L1 as L3), only when no
line-to-neutral voltage is present. Power drawn from the grid is negative (``derim.models``).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from derim.errors import ProtocolError
from derim.models.common import to_utc
from derim.models.telemetry import EVChargerTelemetry

_Scale = tuple[float, float]
"""Conversion of a unit to the canonical one: canonical = value * scale + offset."""

_ENERGY: dict[str, _Scale] = {"Wh": (1e-3, 0.0), "kWh": (1.0, 0.0)}
_POWER: dict[str, _Scale] = {"W": (1e-3, 0.0), "kW": (1.0, 0.0)}
_REACTIVE: dict[str, _Scale] = {"var": (1e-3, 0.0), "kvar": (1.0, 0.0)}
_AMPERE: dict[str, _Scale] = {"A": (1.0, 0.0)}
_VOLT: dict[str, _Scale] = {"V": (1.0, 0.0)}
_HERTZ: dict[str, _Scale] = {"Hz": (1.0, 0.0), "Hertz": (1.0, 0.0)}  # "Hertz" in the 1.6 schema
_PERCENT: dict[str, _Scale] = {"Percent": (1.0, 0.0)}
_UNITLESS: dict[str, _Scale] = {"": (1.0, 0.0)}
_DEGREE_C: dict[str, _Scale] = {
    "Celsius": (1.0, 0.0),
    "Celcius": (1.0, 0.0),  # the 1.6 schema's misspelling
    "Fahrenheit": (5 / 9, -160 / 9),
    "K": (1.0, -273.15),
}

_ELECTRICAL = ("Outlet", "Inlet")
_TEMPERATURE_AT = ("Outlet", "EV", "Cable", "Body", "Inlet")
_SOC_AT = ("EV", "Outlet", "Inlet", "Cable", "Body")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REGISTER = "Energy.Active.Import.Register"
"""The measurand of a sampled value that names none."""


@dataclass(frozen=True, slots=True)
class _Quantity:
    """How one OCPP measurand maps onto canonical fields."""

    fields: tuple[str, ...]
    units: Mapping[str, _Scale]
    """Accepted units; the first is the default."""
    sign: float = 1.0
    """-1 for import quantities, which count against ``fields`` (power_kw = export - import)."""
    locations: tuple[str, ...] = _ELECTRICAL
    """Accepted locations, preferred first."""
    summed: bool = False
    """Per-phase values add up to the total (else they are averaged)."""
    per_phase: str | None = None
    """Pattern of the per-phase fields, e.g. ``current_l{}_a``."""


_QUANTITIES: dict[str, _Quantity] = {
    _REGISTER: _Quantity(("energy_import_kwh", "energy_kwh"), _ENERGY, summed=True),
    "Energy.Active.Export.Register": _Quantity(("energy_export_kwh",), _ENERGY, summed=True),
    "Energy.Active.Import.Interval": _Quantity(("interval_energy_kwh",), _ENERGY, summed=True),
    "Power.Active.Import": _Quantity(("power_kw",), _POWER, sign=-1.0, summed=True),
    "Power.Active.Export": _Quantity(("power_kw",), _POWER, summed=True),
    "Power.Reactive.Import": _Quantity(("reactive_power_kvar",), _REACTIVE, sign=-1.0, summed=True),
    "Power.Reactive.Export": _Quantity(("reactive_power_kvar",), _REACTIVE, summed=True),
    "Power.Offered": _Quantity(("offered_power_kw",), _POWER, summed=True),
    "Current.Import": _Quantity(("current_a",), _AMPERE, per_phase="current_l{}_a"),
    "Current.Offered": _Quantity(("offered_current_a",), _AMPERE),
    "Voltage": _Quantity(("voltage_v",), _VOLT, per_phase="voltage_l{}_v"),
    "Frequency": _Quantity(("frequency_hz",), _HERTZ),
    "Power.Factor": _Quantity(("power_factor",), _UNITLESS),
    "SoC": _Quantity(("soc_percent",), _PERCENT, locations=_SOC_AT),
    "Temperature": _Quantity(("temperature_c",), _DEGREE_C, locations=_TEMPERATURE_AT),
}
"""Mapped measurands, in the order their values are combined (import before export)."""

_PHASES: dict[str, tuple[int, bool]] = {
    **{f"L{n}": (n, False) for n in (1, 2, 3)},
    **{f"L{n}-N": (n, False) for n in (1, 2, 3)},
    **{"L1-L2": (1, True), "L2-L3": (2, True), "L3-L1": (3, True)},
}
"""Phase -> (line 1-3, whether it is line-to-line); "N" (neutral) maps to no field."""
_DECIMAL = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """What one ``meter_value`` list yields: canonical records and the values left out."""

    records: list[EVChargerTelemetry]
    """One per distinct timestamp with at least one mapped value, in input order."""
    problems: list[str]
    """One line per sampled value left out (or sum overflowing), naming it and why."""


@dataclass(frozen=True, slots=True)
class _Sample:
    """One usable sampled value, converted to its canonical unit."""

    measurand: str
    location: str
    phase: tuple[int, bool] | None
    value: float


class _BadSampleError(Exception):
    """A sampled value that is left out; the message says why."""


_UnitReader = Callable[[Mapping[str, Any]], tuple[str, int]]


def readings_v16(
    device_id: str,
    connector_id: int,
    meter_value: Sequence[Mapping[str, Any]],
    transaction_id: str | None = None,
) -> MeterReadings:
    """Canonical readings of an OCPP 1.6 ``meter_value`` (or ``transaction_data``) list.

    Values are decimal strings in ``unit`` (Wh, kWh, W, kW, var, kvar, A, V, Celsius, Fahrenheit,
    K, Percent, Hertz); ``format`` SignedData values are left out as problems. ``connector_id`` 0
    means the whole charger. Raises ``ProtocolError`` when the list, an entry, its timestamp or its
    ``sampled_value`` list is missing or malformed, or the model refuses the record's keys.
    """
    return _readings(_unit_v16, device_id, connector_id, meter_value, transaction_id)


def readings_v201(
    device_id: str,
    evse_id: int,
    meter_value: Sequence[Mapping[str, Any]],
    transaction_id: str | None = None,
) -> MeterReadings:
    """Canonical readings of an OCPP 2.0.1 MeterValues or TransactionEvent ``meter_value`` list.

    Values are numbers in ``unit_of_measure.unit`` times 10 ** ``unit_of_measure.multiplier``;
    ``evse_id`` becomes ``connector_id`` (0: the whole charger). A ``signed_meter_value`` is ignored
    (the plain value is used). Raises ``ProtocolError`` as ``readings_v16`` does.
    """
    return _readings(_unit_v201, device_id, evse_id, meter_value, transaction_id)


def _unit_v16(sampled: Mapping[str, Any]) -> tuple[str, int]:
    """Unit ("" for the default) and multiplier (always 0) of a 1.6 sampled value."""
    value_format = _text(sampled, "format", "Raw")
    if value_format != "Raw":
        raise _BadSampleError(f"format {_show(value_format)} is not a plain number")
    return _text(sampled, "unit", ""), 0


def _unit_v201(sampled: Mapping[str, Any]) -> tuple[str, int]:
    """Unit ("" for the default) and power-of-ten multiplier of a 2.0.1 sampled value."""
    unit_of_measure = sampled.get("unit_of_measure")
    if unit_of_measure is None:
        return "", 0
    if not isinstance(unit_of_measure, Mapping):
        raise _BadSampleError(f"unit_of_measure {_show(unit_of_measure)} is not an object")
    multiplier = unit_of_measure.get("multiplier", 0)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int):
        raise _BadSampleError(f"multiplier {_show(multiplier)} is not an integer")
    return _text(unit_of_measure, "unit", ""), multiplier


def _readings(
    unit_of: _UnitReader,
    device_id: str,
    connector_id: int,
    meter_value: Sequence[Mapping[str, Any]],
    transaction_id: str | None,
) -> MeterReadings:
    """Group the sampled values by timestamp and map each group to a record."""
    if not isinstance(meter_value, list | tuple):
        raise ProtocolError(f"meter_value is {_show(meter_value)}, not a list")
    groups: dict[datetime, list[_Sample]] = {}
    problems: list[str] = []
    for i, entry in enumerate(meter_value):
        where = f"meter_value[{i}]"
        if not isinstance(entry, Mapping):
            raise ProtocolError(f"{where} is {_show(entry)}, not an object")
        timestamp = _timestamp(entry.get("timestamp"), f"{where}.timestamp")
        sampled_values = entry.get("sampled_value")
        if not isinstance(sampled_values, list | tuple) or not sampled_values:
            raise ProtocolError(f"{where}.sampled_value is {_show(sampled_values)}, not a list")
        samples = groups.setdefault(timestamp, [])
        for j, sampled in enumerate(sampled_values):
            if not isinstance(sampled, Mapping):
                raise ProtocolError(
                    f"{where}.sampled_value[{j}] is {_show(sampled)}, not an object"
                )
            try:
                samples.append(_sample(sampled, unit_of))
            except _BadSampleError as exc:
                problems.append(f"{where}.sampled_value[{j}] ({_name(sampled)}): {exc}")
    keys = {"device_id": device_id, "connector_id": connector_id, "transaction_id": transaction_id}
    records = []
    for timestamp, samples in groups.items():
        values, sources = _fields(samples)
        record = _record({**keys, "timestamp": timestamp}, values, sources, problems)
        if record is not None:
            records.append(record)
    return MeterReadings(records, problems)


def _sample(sampled: Mapping[str, Any], unit_of: _UnitReader) -> _Sample:
    """One sampled value in its canonical unit; raise ``_BadSampleError`` if it is unusable."""
    measurand = _text(sampled, "measurand", _REGISTER)
    quantity = _QUANTITIES.get(measurand)
    if quantity is None:
        raise _BadSampleError(f"measurand {_show(measurand)} not mapped")
    location = _text(sampled, "location", "Outlet")
    if location not in quantity.locations:
        raise _BadSampleError(f"location {_show(location)} not used for {measurand}")
    phase_name = _text(sampled, "phase", "")
    phase = _PHASES.get(phase_name) if phase_name else None
    if phase_name and (phase is None or (phase[1] and measurand != "Voltage")):
        raise _BadSampleError(f"phase {_show(phase_name)} not mapped for {measurand}")
    unit, multiplier = unit_of(sampled)
    scale = quantity.units.get(unit or next(iter(quantity.units)))
    if scale is None:
        raise _BadSampleError(f"unit {_show(unit)} not valid for {measurand}")
    raw = sampled.get("value")
    number = _number(raw)
    try:
        value = number * 10.0**multiplier * scale[0] + scale[1]
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise _BadSampleError(f"value {_show(raw)} x 10^{_show(multiplier)} is not finite")
    field = quantity.fields[0]
    try:  # refuse out-of-range values here, before they skew a sum or mean
        EVChargerTelemetry.model_validate(
            {"device_id": "range-check", "timestamp": _EPOCH, field: quantity.sign * value}
        )
    except ValidationError as exc:
        raise _BadSampleError(f"{field}={value!r} refused: {exc.errors()[0]['msg']}") from None
    return _Sample(measurand, location, phase, value)


def _fields(samples: list[_Sample]) -> tuple[dict[str, float], dict[str, str]]:
    """Canonical values of one instant's samples, and the measurand(s) behind each field."""
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for measurand, quantity in _QUANTITIES.items():
        chosen = _best_location(samples, measurand, quantity.locations)
        if not chosen:
            continue
        total, lines = _combine(chosen, quantity.summed)
        for field in quantity.fields:
            values[field] = values.get(field, 0.0) + quantity.sign * total
            sources[field] = f"{sources[field]} and {measurand}" if field in sources else measurand
        if quantity.per_phase is not None:
            for line, value in lines.items():
                values[quantity.per_phase.format(line)] = value
                sources[quantity.per_phase.format(line)] = measurand
    return values, sources


def _best_location(
    samples: list[_Sample], measurand: str, locations: tuple[str, ...]
) -> list[_Sample]:
    """The samples of ``measurand`` at the first of ``locations`` that has any."""
    for location in locations:
        chosen = [s for s in samples if s.measurand == measurand and s.location == location]
        if chosen:
            return chosen
    return []


def _combine(chosen: list[_Sample], summed: bool) -> tuple[float, dict[int, float]]:
    """Total of one measurand's samples (the last of each phase wins) and its value per line."""
    total: float | None = None
    to_neutral: dict[int, float] = {}
    between_lines: dict[int, float] = {}
    for sample in chosen:
        if sample.phase is None:
            total = sample.value
        elif sample.phase[1]:
            between_lines[sample.phase[0]] = sample.value / math.sqrt(3)
        else:
            to_neutral[sample.phase[0]] = sample.value
    lines = to_neutral or between_lines
    if total is None:  # plain sum, not fsum: fsum raises on overflow, sum gives inf (refused)
        total = sum(lines.values()) if summed else sum(lines.values()) / len(lines)
    return total, lines


def _record(
    keys: dict[str, Any], values: dict[str, float], sources: dict[str, str], problems: list[str]
) -> EVChargerTelemetry | None:
    """The record of one instant without the values the model refuses (each a problem).

    None when no value is left; raises ``ProtocolError`` when the model refuses a key field.
    """
    if not values:
        return None
    try:
        return EVChargerTelemetry.model_validate({**keys, **values})
    except ValidationError as exc:
        refused: dict[str, str] = {}
        for error in exc.errors():
            refused.setdefault(str(error["loc"][0]) if error["loc"] else "", error["msg"])
        when = f"reading at {keys['timestamp'].isoformat()}"
        bad_keys = [f"{name}: {message}" for name, message in refused.items() if name not in values]
        if bad_keys:
            raise ProtocolError(f"{when} refused: {'; '.join(bad_keys)}") from exc
        for name, message in refused.items():
            value = values.pop(name)
            problems.append(f"{when}: {name}={value!r} from {sources[name]} refused: {message}")
    return _record(keys, values, sources, problems)


def _timestamp(raw: object, where: str) -> datetime:
    """The UTC instant of ISO 8601 text ``raw``; raise ``ProtocolError`` if there is none."""
    if not isinstance(raw, str):
        raise ProtocolError(f"{where} is {_show(raw)}, not an ISO 8601 string")
    try:
        return to_utc(datetime.fromisoformat(raw))
    except (ValueError, OverflowError) as exc:
        raise ProtocolError(f"{where} {_show(raw)} is not an ISO 8601 date-time: {exc}") from exc


def _number(raw: object) -> float:
    """``raw`` as a float: a JSON number or decimal text; raise ``_BadSampleError`` otherwise."""
    if isinstance(raw, str) and _DECIMAL.fullmatch(raw):
        return float(raw)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        with contextlib.suppress(OverflowError):  # an integer beyond the float range
            return float(raw)
    raise _BadSampleError(f"value {_show(raw)} is not a number")


def _text(sampled: Mapping[str, Any], key: str, default: str) -> str:
    """The string at ``key``, ``default`` when absent; raise ``_BadSampleError`` if not a string."""
    value = sampled.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _BadSampleError(f"{key} {_show(value)} is not a string")
    return value


def _name(sampled: Mapping[str, Any]) -> str:
    """Measurand, phase and location of a sampled value, for problem lines."""
    parts = (sampled.get("measurand", _REGISTER), sampled.get("phase"), sampled.get("location"))
    return " ".join(p[:40] if isinstance(p, str) else _show(p) for p in parts if p is not None)


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a type name if it has no printable repr)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python will print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
