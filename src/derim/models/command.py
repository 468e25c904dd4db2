"""Commands sent to devices and the records of what became of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from derim.errors import InvalidRequestError
from derim.models.common import DeviceId, UtcDatetime
from derim.models.standards import MAX_MAGNITUDE


class CommandType(StrEnum):
    """What a command asks of a device. Power values follow the system sign convention."""

    SET_POWER_LIMIT = "set_power_limit"
    CLEAR_POWER_LIMIT = "clear_power_limit"
    SET_ACTIVE_POWER = "set_active_power"
    SET_REACTIVE_POWER = "set_reactive_power"
    SET_POWER_FACTOR = "set_power_factor"
    BATTERY_CHARGE = "battery_charge"
    BATTERY_DISCHARGE = "battery_discharge"
    START_CHARGING = "start_charging"
    STOP_CHARGING = "stop_charging"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    RESET = "reset"
    CHANGE_AVAILABILITY = "change_availability"
    UNLOCK_CONNECTOR = "unlock_connector"
    GET_COMPOSITE_SCHEDULE = "get_composite_schedule"


class CommandStatus(StrEnum):
    """Lifecycle of a command: requested -> validated -> sent -> one final state."""

    REQUESTED = "requested"
    VALIDATED = "validated"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"


FINAL_STATUSES = frozenset(
    {
        CommandStatus.ACKNOWLEDGED,
        CommandStatus.REJECTED,
        CommandStatus.FAILED,
        CommandStatus.TIMED_OUT,
        CommandStatus.EXPIRED,
    }
)


MAX_PARAMETER_DEPTH = 8
MAX_PARAMETER_ITEMS = 32
"""How deep command parameters may nest and how long each list or object in them may be: they
are small and flat in every protocol DERIM speaks, each command's record keeps them, and a deep
value could not even be serialised into it."""


def _too_large(value: Any, levels: int) -> bool:
    """Whether ``value`` nests lists or dicts more than ``levels`` deep, or holds one longer
    than ``MAX_PARAMETER_ITEMS`` (looks no deeper than ``levels``)."""
    if not isinstance(value, dict | list):
        return False
    if levels == 0 or len(value) > MAX_PARAMETER_ITEMS:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(_too_large(item, levels - 1) for item in items)


class CommandRequest(BaseModel):
    """A request to change a device's behaviour."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    command: CommandType
    value: float | None = Field(
        None,
        ge=-MAX_MAGNITUDE,
        le=MAX_MAGNITUDE,
        description="Setpoint, in the unit given (kW by default).",
    )
    unit: str = Field("kW", max_length=16, pattern=r"^[A-Za-z%]*$")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        max_length=32,
        description=f"Protocol-specific options: JSON nested at most {MAX_PARAMETER_DEPTH} deep, "
        f"each list or object at most {MAX_PARAMETER_ITEMS} long.",
    )
    priority: int = Field(0, ge=0, le=100, description="Kept with the command record.")
    source: str = Field(
        "operator",
        min_length=1,
        max_length=32,
        pattern=r"^[\w.:-]+$",
        description="Who sets a limit (operator, schedule, dr-event, ...): each source holds "
        "its own; the most restrictive active one applies.",
    )
    expires_at: UtcDatetime | None = Field(
        None, description="After this instant, not sent; a power limit lapses then."
    )
    dry_run: bool = Field(False, description="Validate only; do not send.")

    @field_validator("parameters")
    @classmethod
    def _shallow(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        if _too_large(parameters, MAX_PARAMETER_DEPTH):
            raise ValueError(
                f"nested deeper than {MAX_PARAMETER_DEPTH} levels or holding a list or object "
                f"of more than {MAX_PARAMETER_ITEMS} items"
            )
        return parameters

    def normalized(self) -> CommandRequest:
        """``battery_charge`` / ``battery_discharge`` (a rate >= 0) as the ``set_active_power``
        they mean (discharge positive, charge negative); any other command unchanged."""
        if self.command not in (CommandType.BATTERY_CHARGE, CommandType.BATTERY_DISCHARGE):
            return self
        if self.value is None or self.value < 0:
            raise InvalidRequestError("value", f"{self.command.value} takes a rate >= 0")
        sign = 1 if self.command is CommandType.BATTERY_DISCHARGE else -1
        return self.model_copy(
            update={"command": CommandType.SET_ACTIVE_POWER, "value": sign * self.value}
        )


class CommandResult(BaseModel):
    """The record of one command: its request, current status and each step's time."""

    model_config = ConfigDict(extra="forbid")

    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: DeviceId
    request: CommandRequest
    status: CommandStatus = CommandStatus.REQUESTED
    message: str = ""
    history: list[tuple[CommandStatus, datetime]] = Field(default_factory=list)
    device_response: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        """Whether the command has reached a final state."""
        return self.status in FINAL_STATUSES
