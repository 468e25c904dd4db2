"""What a command asks a profile's control point to take, as Modbus and IEC 61850 read it."""

from __future__ import annotations

from typing import Any

import pytest

from derim.adapters.base import requested_value
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandType


def request(**fields: Any) -> CommandRequest:
    """A command with the given fields."""
    return CommandRequest.model_validate(fields)


def test_a_numeric_point_takes_the_value_in_its_unit() -> None:
    """A setpoint gets the command's value when the units agree, and refuses another unit."""
    limit = request(command=CommandType.SET_POWER_LIMIT, value=3.5, unit="kW")
    assert requested_value(limit, "WMaxLim", "kW", has_choices=False) == 3.5
    with pytest.raises(InvalidRequestError, match="WMaxLim takes a value in %") as refused:
        requested_value(limit, "WMaxLim", "%", has_choices=False)
    assert refused.value.field == "unit"


def test_a_point_with_choices_takes_the_command_name_or_the_choice() -> None:
    """``connect`` on a switch means the choice ``connect``; an explicit ``choice`` wins."""
    connect = request(command=CommandType.CONNECT)
    assert requested_value(connect, "Conn", None, has_choices=True) == "connect"
    chosen = request(command=CommandType.CONNECT, parameters={"choice": "reconnect"})
    assert requested_value(chosen, "Conn", None, has_choices=True) == "reconnect"


@pytest.mark.parametrize("choice", [[1, 2], {"a": 1}, True])
def test_a_choice_that_is_no_name_or_number_is_refused(choice: object) -> None:
    """A list, an object or a boolean as ``choice`` is a 422 naming ``parameters.choice``."""
    odd = request(command=CommandType.CONNECT, parameters={"choice": choice})
    with pytest.raises(InvalidRequestError) as refused:
        requested_value(odd, "Conn", None, has_choices=True)
    assert refused.value.field == "parameters.choice"


def test_a_setpoint_without_a_value_is_refused() -> None:
    """A numeric point with no value given names ``value``."""
    with pytest.raises(InvalidRequestError) as refused:
        requested_value(request(command=CommandType.SET_POWER_LIMIT), "WMaxLim", "kW", False)
    assert refused.value.field == "value"
