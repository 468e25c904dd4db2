"""YAML device profiles: a Modbus device's register map, scaling and control points, as data.

A profile lists register blocks (points sharing a register type and unit id) and writable control
points. ``load_profile`` validates one with Pydantic and reports problems as ``ConfigError`` naming
the file, the field path and the YAML line where the offending item starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StringConstraints,
    model_validator,
)

from derim.adapters.fed_fields import fed_field_kind
from derim.adapters.yaml_model import Loc, ProfileLoader, RuleError, StrictModel, inherit
from derim.models.command import CommandType
from derim.models.common import DeviceType

RegisterType = Literal["holding", "input"]
Order = Literal["big", "little"]
DataType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64", "string"]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A point or profile name: lower-case letters, digits and underscores, at most 64 characters."""

WIDTHS: dict[str, int] = {
    "u16": 1,
    "s16": 1,
    "u32": 2,
    "s32": 2,
    "f32": 2,
    "u64": 4,
    "s64": 4,
    "f64": 4,
}
"""Registers per value of each fixed-width data type (strings take ``length`` registers)."""

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    f"{sign}{bits}": (0, 2**bits - 1) if sign == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    for sign in "us"
    for bits in (16, 32, 64)
}
"""Smallest and largest value of each integer data type."""

_F32_MAX = 3.4028234663852886e38
_FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "f32": (-_F32_MAX, _F32_MAX),
    "f64": (-1e308, 1e308),
}


class RegisterSpan(StrictModel):
    """Where a value lives: address, register type, data type and layout."""

    name: Name
    address: int = Field(ge=0, le=65535, description="Protocol (0-based) register address.")
    data_type: DataType
    length: int | None = Field(None, ge=1, le=125, description="Registers of a string.")
    register_type: RegisterType = "holding"
    unit_id: int | None = Field(None, ge=0, le=255, description="None: the connection's unit id.")
    word_order: Order = Field("big", description="little: least significant register first.")
    byte_order: Order = Field("big", description="little: low byte first within each register.")
    description: str = ""

    @property
    def count(self) -> int:
        """Number of registers the value occupies."""
        return self.length if self.length is not None else WIDTHS[self.data_type]

    @model_validator(mode="after")
    def _check_span(self) -> RegisterSpan:
        if (self.data_type == "string") != (self.length is not None):
            raise ValueError("length (in registers) is required for strings and only for strings")
        if self.address + self.count > 65536:
            raise ValueError("the value runs past register 65535")
        return self


class Point(RegisterSpan):
    """A readable value, ``raw * scale * 10**scale_factor + offset`` in ``unit``, for ``field``."""

    scale: float = Field(1.0, description="Fixed multiplier applied to the raw value.")
    scale_factor: Name | None = Field(None, description="Point holding a power-of-ten exponent.")
    offset: float = Field(0.0, description="Added after scaling, in ``unit``.")
    unit: str = Field("", description="Unit of the scaled value, such as kW.")
    field: str | None = Field(None, description="Canonical telemetry field fed by the point.")
    not_implemented: list[int] = Field(
        default_factory=list, description="Raw register bit patterns meaning 'no value'."
    )
    enum: dict[int, str] | None = Field(None, description="Raw value -> canonical enum value.")

    @model_validator(mode="after")
    def _check_point(self) -> Point:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        plain = _unscaled(self)
        if self.data_type == "string" and not (
            plain and not self.not_implemented and not self.enum
        ):
            raise ValueError("a string point takes no scale, offset, sentinels or enum")
        if self.enum is not None and not (plain and self.data_type in INTEGER_RANGES):
            raise ValueError("an enum point must be an unscaled integer")
        for sentinel in self.not_implemented:
            if not 0 <= sentinel < 2 ** (16 * self.count):
                raise ValueError(f"sentinel {sentinel:#x} does not fit in {self.count} register(s)")
        return self


def _unscaled(point: Point) -> bool:
    """Whether ``point`` takes its raw value as is (scale 1, no scale factor, no offset)."""
    return point.scale == 1 and point.scale_factor is None and point.offset == 0


class ControlPoint(RegisterSpan):
    """A writable holding register: a number within ``min``..``max`` or one of ``choices``."""

    register_type: Literal["holding"] = "holding"
    scale: float = Field(1.0, description="Register value = (value - offset) / scale.")
    offset: float = 0.0
    unit: str = Field("", description="Unit of the value written, such as kW.")
    min: float | None = Field(None, description="Smallest value accepted, in ``unit``.")
    max: float | None = Field(None, description="Largest value accepted, in ``unit``.")
    choices: dict[str, int] | None = Field(None, description="Command word -> register value.")
    commands: list[CommandType] = Field(
        default_factory=list,
        description="Canonical commands this point carries out: a numeric point takes the "
        "command's value, a choice point the choice named like the command.",
    )

    @model_validator(mode="after")
    def _check_control(self) -> ControlPoint:
        if self.data_type == "string" or self.scale == 0:
            raise ValueError("a control point is numeric, with a non-zero scale")
        raws: list[float]
        if self.choices is not None:
            if self.min is not None or self.max is not None or not self.choices:
                raise ValueError("give either non-empty choices or min and max, not both")
            raws = list(self.choices.values())
        elif self.min is None or self.max is None or self.min > self.max:
            raise ValueError("a numeric control point needs min <= max")
        else:
            raws = [(limit - self.offset) / self.scale for limit in (self.min, self.max)]
        low, high = INTEGER_RANGES.get(self.data_type) or _FLOAT_RANGES[self.data_type]
        if not all(low <= round(raw) <= high for raw in raws):
            raise ValueError(f"the limits do not fit in {self.data_type}")
        return self


class ReadSettings(StrictModel):
    """How reads may be coalesced for this device."""

    max_registers: int = Field(125, ge=1, le=125, description="Registers per read request.")
    max_gap: int = Field(10, ge=0, le=125, description="Unused registers a request may bridge.")


class Block(StrictModel):
    """Points sharing a register type and unit id; its layout settings are the points' defaults."""

    register_type: RegisterType = "holding"
    unit_id: int | None = Field(None, ge=0, le=255)
    word_order: Order = "big"
    byte_order: Order = "big"
    points: list[Point] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _pass_defaults(cls, data: Any) -> Any:
        return inherit(data, "points", ("register_type", "unit_id", "word_order", "byte_order"))


class Profile(StrictModel):
    """A device profile: register map, scaling, canonical fields and control points."""

    name: Name
    description: str = ""
    device_type: DeviceType
    word_order: Order = "big"
    byte_order: Order = "big"
    read: ReadSettings = Field(default_factory=ReadSettings)
    blocks: list[Block] = Field(min_length=1)
    controls: list[ControlPoint] = Field(default_factory=list)

    @property
    def points(self) -> list[Point]:
        """Every readable point, in profile order."""
        return [point for block in self.blocks for point in block.points]

    def located_points(self) -> Iterator[tuple[Loc, Point]]:
        """Each readable point with its path in the profile."""
        for b, block in enumerate(self.blocks):
            for p, point in enumerate(block.points):
                yield ("blocks", b, "points", p), point

    @model_validator(mode="before")
    @classmethod
    def _pass_orders(cls, data: Any) -> Any:
        data = inherit(data, "blocks", ("word_order", "byte_order"))
        return inherit(data, "controls", ("word_order", "byte_order"))

    @model_validator(mode="after")
    def _check_references(self) -> Profile:
        seen: set[str] = set()
        spans: list[tuple[Loc, RegisterSpan]] = list(self.located_points())
        spans += [(("controls", c), control) for c, control in enumerate(self.controls)]
        for loc, span in spans:
            if span.name in seen:
                raise RuleError((*loc, "name"), f"duplicate point name {span.name!r}")
            seen.add(span.name)
            if span.count > self.read.max_registers:
                raise RuleError(loc, f"{span.count} registers exceed read.max_registers")
        by_name = {point.name: point for point in self.points}
        fed: set[str] = set()
        for loc, point in self.located_points():
            _check_field(self.device_type, loc, point, fed)
            if point.scale_factor is not None:
                _check_scale_factor(loc, by_name.get(point.scale_factor), point.scale_factor)
        return self


def _check_field(device_type: DeviceType, loc: Loc, point: Point, fed: set[str]) -> None:
    """Raise ``RuleError`` unless ``point.field`` is a free field its data type can feed."""
    kind = fed_field_kind(device_type, loc, point.field, point.enum, fed)
    if kind is None:
        return
    where = (*loc, "field")
    if (kind is str) != (point.data_type == "string"):
        raise RuleError(where, f"{point.field!r} cannot be fed by a {point.data_type} point")
    if kind is int and not (point.data_type in INTEGER_RANGES and _unscaled(point)):
        raise RuleError(where, f"{point.field!r} needs an unscaled integer point")


def _check_scale_factor(loc: Loc, target: Point | None, name: str) -> None:
    """Raise ``RuleError`` unless ``target`` is an unscaled one-register integer point."""
    if target is None:
        raise RuleError((*loc, "scale_factor"), f"no point named {name!r}")
    if target.data_type not in ("s16", "u16") or not _unscaled(target):
        raise RuleError((*loc, "scale_factor"), f"{name!r} must be an unscaled s16 or u16")


PROFILES = ProfileLoader(Profile, "device profile", "derim.adapters.modbus")
"""Modbus device profiles: shipped ones are in ``derim/adapters/modbus/profiles``."""


def shipped_profile(name: str) -> Profile:
    """The profile ``name`` shipped with DERIM (``generic_meter``, ``generic_battery``, ...)."""
    return PROFILES.shipped(name)


def load_profile(path: str | Path) -> Profile:
    """Read and validate the YAML device profile at ``path``; raise ``ConfigError`` if invalid."""
    return PROFILES.file(path)


def load_profile_text(text: str, source: str = "<string>") -> Profile:
    """Validate the YAML profile ``text``; ``source`` names it in ``ConfigError`` messages."""
    return PROFILES.text(text, source)
