"""MQTT topic and payload mappings: which topics carry which device's canonical fields, as data.

A mapping lists routes, each an MQTT subscription filter, a template naming the device from the
received topic's levels, and where each canonical field sits in the payload: a JSON object (or a
batch of them), a plain number, or Sparkplug-style JSON metrics. ``load_mapping`` validates one with
Pydantic and reports problems as ``ConfigError`` naming the file, the field path and the YAML line.
Each route compiles its JSON paths and unit conversions once (``Target``), for
``derim.adapters.mqtt.decode``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    model_validator,
)

from derim.adapters.modbus.profile import Name
from derim.adapters.yaml_model import Loc, RuleError, StrictModel, inherit, load_yaml_model
from derim.errors import ConfigError
from derim.models.common import ID_PATTERN, MAX_ID_LENGTH, DeviceType
from derim.models.standards import standard_names
from derim.models.telemetry import (
    ENUM_FIELDS,
    METADATA_FIELDS,
    TELEMETRY_BY_DEVICE_TYPE,
    telemetry_fields,
)

TimestampFormat = Literal["iso8601", "epoch_s", "epoch_ms", "auto"]
Keys = tuple[str | int, ...]
"""A compiled JSON path: object keys and list indices, outermost first."""
Kind = Literal["number", "integer", "text", "enum"]
"""What a field holds: a float, an int (``connector_id``), a string or an enum value."""

UNITS: dict[str, tuple[str, int]] = {
    "W": ("kW", -3),
    "kW": ("kW", 0),
    "MW": ("kW", 3),
    "Wh": ("kWh", -3),
    "kWh": ("kWh", 0),
    "MWh": ("kWh", 3),
    "var": ("kvar", -3),
    "kvar": ("kvar", 0),
    "Mvar": ("kvar", 3),
    "mV": ("V", -3),
    "V": ("V", 0),
    "kV": ("V", 3),
    "mA": ("A", -3),
    "A": ("A", 0),
    "Hz": ("Hz", 0),
    "%": ("%", 0),
    "degC": ("degC", 0),
    "W/m2": ("W/m2", 0),
}
"""Units a mapping may name: the canonical unit (a field's x-unit) each converts to, and the power
of ten of the conversion (W -> kW is -3)."""

_PATH = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_PLACEHOLDER = re.compile(r"\{(\d+)\}")
_ID_CHARS = re.compile(r"[A-Za-z0-9._:@-]*")


@dataclass(frozen=True, slots=True)
class Target:
    """A canonical field, where its raw value comes from, and how it becomes canonical.

    A number becomes ``raw * multiplier / divisor + shift``, the mapping's ``(raw * scale +
    offset)`` in its unit converted to the canonical unit. One of ``multiplier`` and ``divisor``
    is 1: a factor below 1 whose inverse is an integer divides (1520 W reads 1.52 kW and 453 at
    scale 0.1 reads 45.3, not 1.5200000000000002 and 45.300000000000004). The result must lie
    within ``low``..``high``, the field's own limits.
    """

    field: str
    kind: Kind
    source: str
    """Where the value comes from, for error messages (``path 'data.P'``, ``metric 'P'``)."""
    keys: Keys = ()
    """JSON path of the value inside a reading object (json routes only)."""
    multiplier: float = 1.0
    divisor: float = 1.0
    shift: float = 0.0
    low: float = float("-inf")
    high: float = float("inf")
    max_length: int | None = None
    enum: dict[str, str] | None = None
    """Raw code (as text: ``"1"``, ``"true"``, ``"RUN"``) -> canonical enum value."""


def _keys(path: str) -> Keys:
    """Compile a JSON path (dotted keys and ``[i]`` list indices, like ``data[0].P``) to keys."""
    return tuple(int(index) if index else key for key, index in _PATH_PART.findall(path))


def _check_path(value: str) -> str:
    if _PATH.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not a path: use dotted keys and [i] list indices, like data[0].P"
        )
    return value


def _check_filter(value: str) -> str:
    """Raise ``ValueError`` unless ``value`` is an MQTT subscription filter a mapping may use."""
    if value.startswith("$share/"):
        raise ValueError(
            "shared subscriptions ($share/...) are set by the adapter, not in a mapping"
        )
    if not value or "\x00" in value or len(value.encode()) > 65535:
        raise ValueError("a topic filter is 1 to 65535 bytes of UTF-8 without NUL")
    levels = value.split("/")
    for n, level in enumerate(levels):
        if "#" in level and (level != "#" or n != len(levels) - 1):
            raise ValueError(f"{value!r}: '#' must be a whole level, and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{value!r}: '+' must be a whole level")
    return value


def _check_template(value: str) -> str:
    """Raise ``ValueError`` unless ``value`` is device id text with ``{n}`` topic level fields."""
    literal = _PLACEHOLDER.sub("", value)
    if _ID_CHARS.fullmatch(literal) is None or len(literal) > MAX_ID_LENGTH:
        raise ValueError(
            f"{value!r} is not a device id template: letters, digits and ._:@- "
            "with {n} for level n of the received topic"
        )
    if literal == value and re.fullmatch(ID_PATTERN, value) is None:
        raise ValueError(f"{value!r} is not a device id (it must start with a letter or digit)")
    return value


def _check_command_topic(value: str) -> str:
    """Raise ``ValueError`` unless ``value`` is a topic name with optional ``{device_id}``."""
    plain = value.replace("{device_id}", "x")
    if not plain or any(c in plain for c in "+#{}\x00"):
        raise ValueError(f"{value!r} is not a topic: no wildcards, braces only in {{device_id}}")
    return value


def _enum_codes(value: Any) -> Any:
    """Integer codes as text; refuse YAML booleans (an unquoted on, off, yes, no, true, false)."""
    if not isinstance(value, dict):
        return value
    if any(isinstance(item, bool) for pair in value.items() for item in pair):
        raise ValueError("YAML reads unquoted on/off/yes/no/true/false as booleans: quote them")
    return {str(code) if isinstance(code, int) else code: item for code, item in value.items()}


JsonPath = Annotated[str, AfterValidator(_check_path)]
TopicFilter = Annotated[str, AfterValidator(_check_filter)]
CommandTopic = Annotated[str, AfterValidator(_check_command_topic)]
EnumMap = Annotated[dict[str, str], BeforeValidator(_enum_codes)]


class ValueSpec(StrictModel):
    """How a raw value becomes canonical: ``raw * scale + offset`` in ``unit``, or an enum code."""

    unit: str | None = Field(None, description="Unit of the scaled value; None: canonical.")
    scale: float = Field(1.0, description="Multiplier applied to the raw value.")
    offset: float = Field(0.0, description="Added after scaling, in ``unit``.")
    enum: EnumMap | None = Field(None, description="Raw code -> canonical enum value.")

    @model_validator(mode="after")
    def _check_scale(self) -> Self:
        if self.scale == 0:
            raise RuleError(("scale",), "scale must not be 0")
        return self


class JsonField(ValueSpec):
    """A canonical field's value at ``path`` inside each reading object."""

    path: JsonPath


class Metric(ValueSpec):
    """The canonical field a named metric feeds."""

    field: str


class TimestampSpec(StrictModel):
    """Where a reading's timestamp is, and how it is written.

    ``auto``: a string is ISO 8601, a number epoch milliseconds above 1e11 and epoch seconds
    otherwise. ISO 8601 without an offset is UTC.
    """

    path: JsonPath
    format: TimestampFormat = "auto"


class RouteBase(StrictModel):
    """What every route has: the subscription filter and who the device is."""

    topic: TopicFilter = Field(description="MQTT subscription filter; + and # wildcards.")
    device_id: Annotated[str, AfterValidator(_check_template)] = Field(
        description="Device id template: {n} is level n (0-based) of the received topic."
    )
    device_type: DeviceType

    @cached_property
    def levels(self) -> tuple[str, ...]:
        """The filter's levels, split once for matching."""
        return tuple(self.topic.split("/"))

    @model_validator(mode="after")
    def _check_levels(self) -> Self:
        levels = self.levels
        for match in _PLACEHOLDER.finditer(self.device_id):
            index = int(match[1])
            if index >= len(levels) or levels[index] == "#":
                raise RuleError(
                    ("device_id",),
                    f"{match[0]} must name a level of {self.topic!r} other than '#' "
                    f"(levels 0 to {len(levels) - 1})",
                )
        return self


class JsonRoute(RouteBase):
    """JSON payloads: one reading object, or a batch of them at ``readings``."""

    format: Literal["json"]
    readings: JsonPath | None = Field(None, description="Path of a list of reading objects.")
    timestamp: TimestampSpec | None = None
    fields: dict[str, JsonField] = Field(min_length=1)

    @cached_property
    def targets(self) -> tuple[Target, ...]:
        """Each mapped field with its compiled path and conversion."""
        return tuple(
            _compile_target(
                self.device_type,
                name,
                spec,
                (f"path {spec.path!r}", _keys(spec.path)),
                ("fields", name),
                ("fields", name),
            )
            for name, spec in self.fields.items()
        )

    @cached_property
    def readings_keys(self) -> Keys | None:
        """Compiled ``readings`` path; None when the payload object is one reading."""
        return None if self.readings is None else _keys(self.readings)

    @cached_property
    def timestamp_keys(self) -> Keys | None:
        """Compiled timestamp path inside each reading object; None without a timestamp."""
        return None if self.timestamp is None else _keys(self.timestamp.path)

    @model_validator(mode="after")
    def _compile(self) -> Self:
        _ = self.targets  # compile, and so check, the fields once, at load time
        return self


class NumberRoute(RouteBase, ValueSpec):
    """Payloads that are one plain decimal number (ASCII) for ``field``."""

    format: Literal["number"]
    field: str

    @cached_property
    def target(self) -> Target:
        """The field fed, with its compiled conversion."""
        target = _compile_target(
            self.device_type, self.field, self, ("payload", ()), ("field",), ()
        )
        if target.kind == "text":
            raise RuleError(("field",), f"a number cannot feed text field {self.field!r}")
        return target

    @model_validator(mode="after")
    def _compile(self) -> Self:
        _ = self.target  # compile, and so check, the field once, at load time
        return self


class MetricsRoute(RouteBase):
    """Sparkplug-style JSON: ``{"timestamp": ms, "metrics": [{"name", "value", "timestamp"?}]}``."""

    format: Literal["metrics"]
    metrics: dict[str, Metric] = Field(min_length=1, description="Metric name -> field fed.")

    @cached_property
    def targets(self) -> dict[str, Target]:
        """Metric name -> the field it feeds, with its compiled conversion."""
        targets: dict[str, Target] = {}
        fed: set[str] = set()
        for name, spec in self.metrics.items():
            loc = ("metrics", name)
            if spec.field in fed:
                raise RuleError((*loc, "field"), f"field {spec.field!r} is fed twice")
            fed.add(spec.field)
            targets[name] = _compile_target(
                self.device_type, spec.field, spec, (f"metric {name!r}", ()), (*loc, "field"), loc
            )
        return targets

    @model_validator(mode="after")
    def _compile(self) -> Self:
        _ = self.targets  # compile, and so check, the metrics once, at load time
        return self


Route = JsonRoute | NumberRoute | MetricsRoute
_FORMATS = ("json", "number", "metrics")


class CommandTopics(StrictModel):
    """Where commands to a device are published and answered; ``{device_id}`` names the device."""

    topic: CommandTopic
    response_topic: CommandTopic | None = None
    timeout_s: float = Field(5.0, gt=0, le=300, description="Wait for a response, s.")
    qos: Literal[0, 1, 2] = 1

    @model_validator(mode="after")
    def _check_placeholder(self) -> Self:
        if "{device_id}" not in self.topic:
            raise RuleError(("topic",), "the command topic must contain {device_id}")
        return self


class Mapping(StrictModel):
    """An MQTT mapping: routes from topics and payloads to canonical fields, and command topics."""

    name: Name
    description: str = ""
    device_type: DeviceType = Field(description="Device type of routes that name none.")
    routes: list[Annotated[Route, Field(discriminator="format")]] = Field(min_length=1)
    commands: CommandTopics | None = None

    @model_validator(mode="before")
    @classmethod
    def _pass_device_type(cls, data: Any) -> Any:
        return inherit(data, "routes", ("device_type",))

    @model_validator(mode="after")
    def _check_topics(self) -> Self:
        seen: set[str] = set()
        for n, route in enumerate(self.routes):
            if route.topic in seen:
                raise RuleError(("routes", n, "topic"), f"{route.topic!r} is routed twice")
            seen.add(route.topic)
        return self


def _compile_target(
    device_type: DeviceType,
    field: str,
    spec: ValueSpec,
    source: tuple[str, Keys],
    field_loc: Loc,
    spec_loc: Loc,
) -> Target:
    """Compile ``spec`` feeding ``field`` from ``source`` (a description and the JSON path).

    Raise ``RuleError`` at ``field_loc`` or ``spec_loc`` if the spec cannot feed the field.
    """
    cls = TELEMETRY_BY_DEVICE_TYPE[device_type]
    allowed = [name for name in cls.model_fields if name not in METADATA_FIELDS]
    if field not in allowed:
        raise RuleError(field_loc, f"{field!r} is not a {cls.__name__} field: {allowed}")
    converts = spec.unit is not None or spec.scale != 1 or spec.offset != 0
    enum_cls = ENUM_FIELDS.get(field)
    if enum_cls is not None:
        if spec.enum is None:
            raise RuleError(field_loc, f"{field!r} needs an enum map")
        if converts:
            raise RuleError(spec_loc, f"{field!r} takes no unit, scale or offset")
        values = sorted(member.value for member in enum_cls)
        for code, value in spec.enum.items():
            if value not in values:
                raise RuleError((*spec_loc, "enum", code), f"{value!r} is not in {values}")
        return Target(field, "enum", *source, enum=dict(spec.enum))
    if spec.enum is not None:
        raise RuleError((*spec_loc, "enum"), f"{field!r} does not take an enum map")
    low, high, max_length = float("-inf"), float("inf"), None
    for limit in cls.model_fields[field].metadata:  # annotated_types Ge, Le and MaxLen
        low = float(getattr(limit, "ge", low))
        high = float(getattr(limit, "le", high))
        max_length = getattr(limit, "max_length", max_length)
    kind = telemetry_fields()[field]
    if kind is not float:
        if converts:
            raise RuleError(spec_loc, f"{field!r} takes its value as is: no unit or scale")
        return Target(
            field,
            "integer" if kind is int else "text",
            *source,
            low=low,
            high=high,
            max_length=max_length,
        )
    exponent = 0
    if spec.unit is not None:
        canonical = standard_names(cls)[field].unit
        unit, exponent = UNITS.get(spec.unit, ("?", 0))
        if unit != canonical:
            units = [name for name, (to, _) in UNITS.items() if to == canonical]
            problem = (
                f"{spec.unit!r} does not convert to {canonical}, the unit of {field!r}: "
                f"use one of {units}"
                if units
                else f"{field!r} is dimensionless: leave unit out"
            )
            raise RuleError((*spec_loc, "unit"), problem)
    power = 10.0 ** abs(exponent)
    factor = spec.scale * power if exponent >= 0 else spec.scale / power
    shift = spec.offset * power if exponent >= 0 else spec.offset / power
    multiplier, divisor = factor, 1.0
    inverse = 1 / factor
    if abs(factor) < 1 and inverse.is_integer():
        multiplier, divisor = 1.0, inverse
    return Target(
        field,
        "number",
        *source,
        multiplier=multiplier,
        divisor=divisor,
        shift=shift,
        low=low,
        high=high,
    )


def shipped_mapping(name: str) -> Mapping:
    """The mapping ``name`` shipped with DERIM (``gateway_json``, ``sparkplug_metrics``)."""
    resource = files("derim.adapters.mqtt").joinpath("mappings", f"{name}.yaml")
    if not resource.is_file():
        raise ConfigError(f"no shipped MQTT mapping named {name!r}")
    return load_mapping_text(resource.read_text(encoding="utf-8"), f"shipped mapping {name}")


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate the YAML MQTT mapping at ``path``; raise ``ConfigError`` if invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read MQTT mapping {path}: {exc}") from exc
    return load_mapping_text(text, str(path))


def load_mapping_text(text: str, source: str = "<string>") -> Mapping:
    """Validate the YAML mapping ``text``; ``source`` names it in ``ConfigError`` messages."""
    return load_yaml_model(text, source, Mapping, "MQTT mapping", _without_route_tag)


def _without_route_tag(loc: Loc) -> Loc:
    """``loc`` without the union tag Pydantic adds after ``routes.<n>``."""
    if loc[:1] == ("routes",) and len(loc) > 2 and loc[2] in _FORMATS:
        return loc[:2] + loc[3:]
    return loc


def topic_matches(filter: str, topic: str) -> bool:
    """Whether the received ``topic`` matches the subscription ``filter`` (MQTT 3.1.1 / 5 rules).

    ``+`` matches one level, a final ``#`` the parent level and any below it; a filter starting
    with a wildcard does not match a topic starting with ``$`` (such as ``$SYS/...``).
    """
    return _matches(tuple(filter.split("/")), topic.split("/"))


def route_for(mapping: Mapping, topic: str) -> Route | None:
    """The first route of ``mapping`` whose filter matches the received ``topic``, or None."""
    levels = topic.split("/")
    return next((route for route in mapping.routes if _matches(route.levels, levels)), None)


def _matches(filter_levels: tuple[str, ...], levels: list[str]) -> bool:
    if levels[0][:1] == "$" and filter_levels[0] in ("+", "#"):
        return False
    for n, wanted in enumerate(filter_levels):
        if wanted == "#":
            return True
        if n >= len(levels) or (wanted != "+" and wanted != levels[n]):
            return False
    return len(filter_levels) == len(levels)
