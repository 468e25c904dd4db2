"""Safety checks a setpoint must pass before it is sent: the device's ``ControlLimits``.

- ``min_power_kw`` / ``max_power_kw``: the setpoint range (kW, grid-positive);
- ``soc_min_percent`` / ``soc_max_percent``: a battery at or below its minimum state of charge
  is not discharged, at or above its maximum not charged (judged on its latest reading);
- ``ramp_kw_per_s``: a setpoint may differ from the previous one sent by at most the ramp rate
  times the seconds since then.

Each refusal is an ``InvalidRequestError`` naming the bound, so the caller gets a 422 and
nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandType
from derim.models.device import DERDevice

SETPOINTS = frozenset({CommandType.SET_ACTIVE_POWER, CommandType.SET_POWER_LIMIT})


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A setpoint sent to a device (kW) and when."""

    value_kw: float
    at: datetime


def check_limits(
    device: DERDevice,
    request: CommandRequest,
    soc_percent: float | None,
    previous: Setpoint | None,
    now: datetime,
) -> None:
    """Refuse ``request`` if it breaks one of the device's limits (422 naming the bound)."""
    limits = device.limits
    if limits is None or request.command not in SETPOINTS or request.value is None:
        return
    if request.unit != "kW":
        return
    value = request.value
    if limits.min_power_kw is not None and value < limits.min_power_kw:
        _refuse(f"{value:g} kW is below the device's minimum of {limits.min_power_kw:g} kW",
                "min_power_kw")  # fmt: skip
    if limits.max_power_kw is not None and value > limits.max_power_kw:
        _refuse(f"{value:g} kW is above the device's maximum of {limits.max_power_kw:g} kW",
                "max_power_kw")  # fmt: skip
    if request.command is CommandType.SET_ACTIVE_POWER and soc_percent is not None:
        low, high = limits.soc_min_percent, limits.soc_max_percent
        if value > 0 and low is not None and soc_percent <= low:
            _refuse(f"no discharge: the battery is at {soc_percent:g} % state of charge, at or "
                    f"below its minimum of {low:g} %", "soc_min_percent")  # fmt: skip
        if value < 0 and high is not None and soc_percent >= high:
            _refuse(f"no charge: the battery is at {soc_percent:g} % state of charge, at or "
                    f"above its maximum of {high:g} %", "soc_max_percent")  # fmt: skip
    if limits.ramp_kw_per_s is not None and previous is not None:
        allowed = limits.ramp_kw_per_s * max(0.0, (now - previous.at).total_seconds())
        if abs(value - previous.value_kw) > allowed:
            _refuse(f"a change from {previous.value_kw:g} kW to {value:g} kW now exceeds the "
                    f"ramp rate of {limits.ramp_kw_per_s:g} kW/s (at most {allowed:.3g} kW "
                    "since the last setpoint)", "ramp_kw_per_s")  # fmt: skip


def _refuse(message: str, bound: str) -> NoReturn:
    """A 422 on ``value`` naming the bound at fault."""
    raise InvalidRequestError("value", f"{message} (limits.{bound})")
