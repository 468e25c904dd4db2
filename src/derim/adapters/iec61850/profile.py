"""YAML device profiles for IEC 61850 IEDs: which data attributes feed which canonical fields,
and which setpoints carry out which commands.

References are written without the IED name (``DER/MMXU1.TotW.mag.f``: logical device ``DER``,
logical node ``MMXU1``, data object ``TotW``, attribute ``mag.f``); the connection's
``ied_name`` is put in front, so one profile serves every IED of a kind. ``load_profile``
validates a profile with Pydantic and reports problems as ``ConfigError`` naming the file, the
field path and the YAML line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from derim.adapters.fed_fields import fed_field_kind
from derim.adapters.yaml_model import Loc, ProfileLoader, RuleError, StrictModel
from derim.models.command import CommandType
from derim.models.common import DeviceType

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A point or profile name: lower-case letters, digits and underscores, at most 64 characters."""

_PART = r"[A-Za-z][A-Za-z0-9_]{0,63}"
ObjectRef = Annotated[
    str,
    StringConstraints(pattern=rf"^{_PART}/{_PART}(\.{_PART}){{2,}}$", max_length=129),
]
"""``LD/LN.DO.DA`` (more ``.`` parts for sub-objects and components), without the IED name."""
DataObjectRef = Annotated[
    str,
    StringConstraints(pattern=rf"^{_PART}/{_PART}(\.{_PART})+$", max_length=129),
]
"""``LD/LN.DO`` (a controllable data object, or any deeper attribute)."""

ReadFc = Literal["MX", "ST", "SP", "CF", "DC", "SG", "SE", "SV"]
"""Functional constraints a point may be read under."""
PointType = Literal["float", "int", "string"]
"""MMS value kinds a point holds: float (FLOAT32/64), int (INTn, UINTn, Enum), string."""
ControlType = Literal["float", "int", "bool"]
"""MMS value kinds a setpoint is written as: FLOAT32, INT32 or BOOLEAN."""
Service = Literal["write", "operate"]
"""How a setpoint is set: an MMS Write of a setting attribute (FC SP: ASG ``setMag.f``, ING
``setVal``, SPG ``setVal``), or the ACSI control service on a controllable data object (APC,
INC, SPC ``Oper``)."""
ControlModel = Literal["direct-normal", "direct-enhanced"]
"""Control models the adapter operates (select-before-operate is not supported)."""

INT32_RANGE = (-(2**31), 2**31 - 1)
"""Smallest and largest INT32, the widest integer a setpoint is written as."""
FLOAT32_MAX = 3.4028234663852886e38


class Point(StrictModel):
    """A readable data attribute, ``raw * scale + offset`` in ``unit``, for canonical ``field``."""

    name: Name
    ref: ObjectRef
    fc: ReadFc = Field(description="Functional constraint of the attribute (MX, ST, ...).")
    type: PointType
    scale: float = Field(1.0, description="Multiplier applied to the raw value (W -> kW: 0.001).")
    offset: float = Field(0.0, description="Added after scaling, in ``unit``.")
    unit: str = Field("", description="Unit of the scaled value, such as kW.")
    field: str | None = Field(None, description="Canonical telemetry field fed by the point.")
    quality: ObjectRef | None = Field(
        None, description="The data object's ``q`` attribute (same FC), read with the value."
    )
    enum: dict[int, str] | None = Field(None, description="Raw ordinal -> canonical enum value.")
    description: str = ""

    @property
    def unscaled(self) -> bool:
        """Whether the raw value is taken as is (scale 1, offset 0)."""
        return self.scale == 1 and self.offset == 0

    @model_validator(mode="after")
    def _check_point(self) -> Point:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.type == "string" and not (self.unscaled and self.enum is None):
            raise ValueError("a string point takes no scale, offset or enum")
        if self.enum is not None and not (self.type == "int" and self.unscaled):
            raise ValueError("an enum point must be an unscaled int")
        return self


class ControlPoint(StrictModel):
    """A setpoint: a number within ``min``..``max`` or one of ``choices``.

    The value sent is ``(value - offset) / scale`` (kW -> W: scale 0.001). A ``write`` setpoint
    is the attribute ``ref`` (FC ``SP``), read back from itself; an ``operate`` setpoint is the
    controllable data object ``ref``, read back from ``read_back`` (such as ``mxVal.f``, MX).
    The read-back must come within ``tolerance`` of the value sent.
    """

    name: Name
    ref: DataObjectRef
    type: ControlType
    service: Service = "write"
    control_model: ControlModel = Field(
        "direct-normal", description="ctlModel of an operate setpoint, as configured in the IED."
    )
    read_back: ObjectRef | None = Field(
        None, description="Attribute that shows an operate setpoint's value (mxVal.f, stVal)."
    )
    read_back_fc: ReadFc = Field("MX", description="Functional constraint of ``read_back``.")
    scale: float = Field(1.0, description="Value in ``unit`` = written value * scale + offset.")
    offset: float = 0.0
    unit: str = Field("", description="Unit of the commanded value, such as kW.")
    min: float | None = Field(None, description="Smallest value accepted, in ``unit``.")
    max: float | None = Field(None, description="Largest value accepted, in ``unit``.")
    choices: dict[str, int | bool] | None = Field(
        None, description="Command word -> value written (for int and bool setpoints)."
    )
    commands: list[CommandType] = Field(
        default_factory=list,
        description="Canonical commands this setpoint carries out: a numeric setpoint takes the "
        "command's value, a choice setpoint the choice named like the command.",
    )
    tolerance: float | None = Field(
        None,
        ge=0,
        description="Largest difference, in ``unit``, between the value commanded and the one "
        "read back for the setpoint to count as carried out (an IED that rounds ``mxVal`` to "
        "10 W needs 0.005 kW with scale 0.001). Unset: only FLOAT32 rounding (a relative 1e-6). "
        "Numeric setpoints only.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _check_control(self) -> ControlPoint:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.tolerance is not None and self.choices is not None:
            raise ValueError("a tolerance is for numeric setpoints, not choices")
        if (self.service == "operate") != (self.read_back is not None):
            raise ValueError("read_back is required for operate setpoints and only for them")
        if self.service == "write" and self.ref.count(".") < 2:
            raise ValueError("a write setpoint's ref names an attribute (LD/LN.DO.DA)")
        if self.choices is not None:
            if self.min is not None or self.max is not None or not self.choices:
                raise ValueError("give either non-empty choices or min and max, not both")
            want = bool if self.type == "bool" else int
            for word, raw in self.choices.items():
                if type(raw) is not want or self.type == "float":
                    raise ValueError(f"choice {word!r} must be a value of a {self.type} setpoint")
            return self
        if self.type == "bool":
            raise ValueError("a bool setpoint needs choices")
        if self.min is None or self.max is None or self.min > self.max:
            raise ValueError("a numeric setpoint needs min <= max")
        low, high = INT32_RANGE if self.type == "int" else (-FLOAT32_MAX, FLOAT32_MAX)
        for limit in (self.min, self.max):
            if not low <= (limit - self.offset) / self.scale <= high:
                raise ValueError(f"the limit {limit} does not fit in a {self.type} setpoint")
        return self


class Profile(StrictModel):
    """An IEC 61850 device profile: readable points and writable setpoints."""

    name: Name
    description: str = ""
    device_type: DeviceType
    points: list[Point] = Field(min_length=1)
    controls: list[ControlPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> Profile:
        seen: set[str] = set()
        named: list[tuple[Loc, str]] = [(("points", i), p.name) for i, p in enumerate(self.points)]
        named += [(("controls", i), c.name) for i, c in enumerate(self.controls)]
        for loc, name in named:
            if name in seen:
                raise RuleError((*loc, "name"), f"duplicate point name {name!r}")
            seen.add(name)
        fed: set[str] = set()
        for i, point in enumerate(self.points):
            _check_field(self.device_type, ("points", i), point, fed)
        return self


def _check_field(device_type: DeviceType, loc: Loc, point: Point, fed: set[str]) -> None:
    """Raise ``RuleError`` unless ``point.field`` is a free field the point's type can feed."""
    kind = fed_field_kind(device_type, loc, point.field, point.enum, fed)
    if kind is None:
        return
    where = (*loc, "field")
    if (kind is str) != (point.type == "string"):
        raise RuleError(where, f"{point.field!r} cannot be fed by a {point.type} point")
    if kind is int and not (point.type == "int" and point.unscaled):
        raise RuleError(where, f"{point.field!r} needs an unscaled int point")


PROFILES = ProfileLoader(Profile, "IEC 61850 profile", "derim.adapters.iec61850")
"""IEC 61850 profiles: shipped ones are in ``derim/adapters/iec61850/profiles``."""


def shipped_profile(name: str) -> Profile:
    """The IEC 61850 profile ``name`` shipped with DERIM (``generic_der_battery``, ...)."""
    return PROFILES.shipped(name)


def load_profile(path: str | Path) -> Profile:
    """Read and validate the YAML profile at ``path``; ``ConfigError`` if invalid."""
    return PROFILES.file(path)


def load_profile_text(text: str, source: str = "<string>") -> Profile:
    """Validate the YAML profile ``text``; ``source`` names it in ``ConfigError`` messages."""
    return PROFILES.text(text, source)
