"""The safety bounds of ``ControlLimits``, one rule at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from derim.control.safety import Setpoint, check_limits
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandType
from derim.models.device import ControlLimits, DERDevice

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
BATTERY = DERDevice(
    id="b1",
    limits=ControlLimits(
        min_power_kw=-5, max_power_kw=5, soc_min_percent=10, soc_max_percent=90, ramp_kw_per_s=2
    ),
)


def setpoint(kw: float, command: CommandType = CommandType.SET_ACTIVE_POWER) -> CommandRequest:
    return CommandRequest(command=command, value=kw)


@pytest.mark.parametrize(
    ("kw", "soc", "previous", "bound"),
    [
        (6.0, 50, None, "max_power_kw"),
        (-6.0, 50, None, "min_power_kw"),
        (1.0, 10, None, "soc_min_percent"),
        (-1.0, 95, None, "soc_max_percent"),
        (4.0, 50, Setpoint(0.0, NOW - timedelta(seconds=1)), "ramp_kw_per_s"),
    ],
)
def test_a_setpoint_beyond_a_bound_is_refused_naming_it(
    kw: float, soc: float, previous: Setpoint | None, bound: str
) -> None:
    """Range, state of charge and ramp rate each refuse with the bound's name."""
    with pytest.raises(InvalidRequestError, match=f"limits.{bound}"):
        check_limits(BATTERY, setpoint(kw), soc, previous, NOW)


@pytest.mark.parametrize(
    ("kw", "soc", "previous"),
    [
        (5.0, 50, None),
        (-1.0, 10, None),
        (1.0, 90, None),
        (4.0, 50, Setpoint(0.0, NOW - timedelta(seconds=2))),
        (1.0, None, None),
    ],
)
def test_a_setpoint_within_its_bounds_passes(
    kw: float, soc: float | None, previous: Setpoint | None
) -> None:
    """At the range's edge, charging an empty or discharging a full battery, a ramp within its
    rate, and an unknown state of charge all pass."""
    check_limits(BATTERY, setpoint(kw), soc, previous, NOW)


def test_limits_in_percent_or_on_other_commands_are_not_judged_in_kw() -> None:
    """A percentage limit and commands that set no power are left to the adapter's checks."""
    percent = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=150, unit="%")
    check_limits(BATTERY, percent, 50, None, NOW)
    check_limits(BATTERY, CommandRequest(command=CommandType.CONNECT), 50, None, NOW)


def test_a_minimum_above_its_maximum_is_refused() -> None:
    """Limits must be ordered."""
    with pytest.raises(ValueError, match="minimum"):
        ControlLimits(soc_min_percent=80, soc_max_percent=20)
