"""Commands mapped onto SunSpec immediate controls (model 123), as pure functions.

``set_power_limit`` writes ``WMaxLimPct`` (percent of ``WMax``, scaled by the device's own
``WMaxLimPct_SF``) and enables it with ``WMaxLim_Ena``; ``clear_power_limit`` disables it;
``connect`` / ``disconnect`` write ``Conn``.
"""

from __future__ import annotations

import math

from derim.adapters.modbus.codec import MISSING
from derim.adapters.sunspec.decode import DecodedBlock
from derim.adapters.sunspec.models import model_definition
from derim.errors import InvalidRequestError, ProtocolError
from derim.models.command import CommandRequest, CommandType

CONTROLS_MODEL = 123
SUPPORTED = frozenset(
    {
        CommandType.SET_POWER_LIMIT,
        CommandType.CLEAR_POWER_LIMIT,
        CommandType.CONNECT,
        CommandType.DISCONNECT,
    }
)


def limit_percent(command: CommandRequest, rated_power_kw: float | None) -> float | None:
    """The power limit of ``command`` in percent of rating (None for other commands).

    ``unit`` may be ``%`` or ``kW`` (kW needs the device's rating). Raises
    ``InvalidRequestError`` for unsupported commands or values outside 0-100 %.
    """
    if command.command not in SUPPORTED:
        raise InvalidRequestError("command", f"SunSpec devices take {', '.join(sorted(SUPPORTED))}")
    if command.command is not CommandType.SET_POWER_LIMIT:
        return None
    if command.value is None:
        raise InvalidRequestError("value", "set_power_limit needs a value")
    if command.unit == "%":
        percent = command.value
    elif command.unit == "kW":
        if not rated_power_kw:
            raise InvalidRequestError("unit", "a limit in kW needs the device's rated_power_kw")
        percent = 100 * command.value / rated_power_kw
    else:
        raise InvalidRequestError("unit", "a power limit is given in % or kW")
    if not 0 <= percent <= 100:
        raise InvalidRequestError("value", f"{percent:.1f} % is outside 0-100 % of rating")
    return percent


def control_writes(
    command: CommandRequest, percent: float | None, controls: DecodedBlock
) -> dict[str, int]:
    """Raw register values to write, by point name, given the device's current model 123."""
    if command.command is CommandType.SET_POWER_LIMIT:
        assert percent is not None  # limit_percent returned a value for this command
        exponent = controls.get("WMaxLimPct_SF")
        if not isinstance(exponent, int):
            raise ProtocolError("model 123 has no usable WMaxLimPct_SF")
        return {"WMaxLimPct": round(percent / 10**exponent), "WMaxLim_Ena": 1}
    if command.command is CommandType.CLEAR_POWER_LIMIT:
        return {"WMaxLim_Ena": 0}
    return {"Conn": 1 if command.command is CommandType.CONNECT else 0}


def point_offset(name: str) -> int:
    """Offset of a model-123 point from the model's ID register."""
    for point in model_definition(CONTROLS_MODEL).group.points:
        if point.name == name:
            return point.offset
    raise ProtocolError(f"model {CONTROLS_MODEL} has no point {name}")


def read_back_matches(written: dict[str, int], controls: DecodedBlock, sf: int) -> bool:
    """Whether model 123, read again, holds what was written."""
    for name, raw in written.items():
        value = controls.get(name)
        if value is MISSING or not isinstance(value, int | float):
            return False
        expected = raw * 10**sf if name == "WMaxLimPct" else raw
        if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9):
            return False
    return True
