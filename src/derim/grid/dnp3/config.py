"""Settings of the DNP3 outstation: where it listens, its link addresses, and the point map
that says which device or group each DNP3 point reads from or commands."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from derim.models.command import CommandType
from derim.models.common import DeviceId
from derim.models.device import Label
from derim.models.telemetry import telemetry_fields

NUMERIC_FIELDS = frozenset(name for name, kind in telemetry_fields().items() if kind is not str)
"""Canonical telemetry fields an analog input may carry (power_kw, energy_kwh, soc_percent...)."""

SETPOINT_COMMANDS = frozenset(
    {
        CommandType.SET_POWER_LIMIT,
        CommandType.SET_ACTIVE_POWER,
        CommandType.SET_REACTIVE_POWER,
        CommandType.SET_POWER_FACTOR,
    }
)
"""Commands an analog output (group 41) may carry: each takes the written value."""

SWITCH_COMMANDS = frozenset(
    {
        CommandType.CONNECT,
        CommandType.DISCONNECT,
        CommandType.START_CHARGING,
        CommandType.STOP_CHARGING,
        CommandType.CLEAR_POWER_LIMIT,
    }
)
"""Commands a control relay output block (group 12) may carry: each takes no value."""

MAX_INDEX = 65535
MAX_OUTSTATION_ADDRESS = 65519
"""DNP3 addresses 0xFFF0-0xFFFF are reserved for broadcast and self-address."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Target(_Strict):
    """One registered device, or every device in a group (registry order)."""

    device: DeviceId | None = None
    group: Label | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Target:
        if (self.device is None) == (self.group is None):
            raise ValueError("give either device or group")
        return self


class AnalogInputPoint(Target):
    """An analog input (group 30/32) that carries one canonical field of the target.

    The outstation sends 32-bit integers: the wire value is ``round(value * scale)``, so
    ``scale: 1000`` sends ``power_kw`` in W and ``scale: 10`` sends ``soc_percent`` in 0.1 %.
    """

    index: int = Field(ge=0, le=MAX_INDEX)
    field: str = Field(description="Canonical telemetry field, such as power_kw.")
    aggregate: Literal["sum", "mean", "min", "max"] = Field(
        "sum", description="How a group's members combine (mean suits soc_percent)."
    )
    scale: float = Field(1.0, gt=0, description="Wire value per unit of the field.")

    @field_validator("field")
    @classmethod
    def _numeric(cls, name: str) -> str:
        if name not in NUMERIC_FIELDS:
            raise ValueError(f"{name!r} is not a numeric telemetry field")
        return name


class BinaryInputPoint(Target):
    """A binary input (group 1/2): ``online`` is on while every targeted device has a fresh
    reading; ``connected`` is on while every one reports a grid-connected operating state."""

    index: int = Field(ge=0, le=MAX_INDEX)
    kind: Literal["online", "connected"]


class AnalogOutputPoint(Target):
    """An analog output (group 41, and its status in group 40) that becomes ``command`` with
    the written value divided by ``scale``, in ``unit`` (``scale: 1000`` takes W for kW)."""

    index: int = Field(ge=0, le=MAX_INDEX)
    command: CommandType = CommandType.SET_POWER_LIMIT
    unit: str = Field("kW", max_length=16, pattern=r"^[A-Za-z%]*$")
    scale: float = Field(1.0, gt=0, description="Wire value per unit of the command.")

    @field_validator("command")
    @classmethod
    def _setpoint(cls, command: CommandType) -> CommandType:
        if command not in SETPOINT_COMMANDS:
            raise ValueError(f"an analog output carries one of {_names(SETPOINT_COMMANDS)}")
        return command


class BinaryOutputPoint(Target):
    """A control relay output block (group 12): latch on or close becomes ``on``, latch off
    or trip becomes ``off``; pulses without a trip/close code are not supported."""

    index: int = Field(ge=0, le=MAX_INDEX)
    on: CommandType = CommandType.CONNECT
    off: CommandType = CommandType.DISCONNECT

    @field_validator("on", "off")
    @classmethod
    def _switch(cls, command: CommandType) -> CommandType:
        if command not in SWITCH_COMMANDS:
            raise ValueError(f"a control relay output carries one of {_names(SWITCH_COMMANDS)}")
        return command


class Dnp3Config(_Strict):
    """The DNP3 outstation DERIM presents to a utility master over TCP."""

    host: str = Field("127.0.0.1", min_length=1, max_length=253, description="Listen address.")
    port: int = Field(20000, ge=0, le=65535, description="Listen port; 0 picks a free one.")
    outstation_address: int = Field(1024, ge=0, le=MAX_OUTSTATION_ADDRESS)
    master_address: int = Field(1, ge=0, le=65535, description="0 accepts any master.")
    refresh_interval_s: float = Field(
        1.0, gt=0, le=3600, description="Seconds between point refreshes from stored readings."
    )
    stale_after_s: float = Field(
        60.0, gt=0, description="A reading older than this (s) counts as communication lost."
    )
    command_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest wait (s) for DERIM's outcome of one control; keep it below the "
        "master's response timeout.",
    )
    setpoint_hold_s: float | None = Field(
        None,
        gt=0,
        description="Setpoints lapse this long (s) after they are written; "
        "None keeps them until replaced.",
    )
    analog_inputs: list[AnalogInputPoint] = Field(default_factory=list)
    binary_inputs: list[BinaryInputPoint] = Field(default_factory=list)
    analog_outputs: list[AnalogOutputPoint] = Field(default_factory=list)
    binary_outputs: list[BinaryOutputPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_indexes(self) -> Dnp3Config:
        kinds = ("analog_inputs", "binary_inputs", "analog_outputs", "binary_outputs")
        if not any(getattr(self, name) for name in kinds):
            # A master's start-up integrity scan of an outstation with no points never ends.
            raise ValueError("map at least one point (analog/binary inputs or outputs)")
        for name in kinds:
            indexes = [point.index for point in getattr(self, name)]
            repeated = sorted({i for i in indexes if indexes.count(i) > 1})
            if repeated:
                raise ValueError(f"{name}: index {repeated[0]} is used more than once")
        return self


def _names(commands: frozenset[CommandType]) -> str:
    return ", ".join(sorted(command.value for command in commands))
