"""DERIM commands as OCPP CALLs, for 1.6 and 2.0.1, and how to read the charger's answer.

Parameters (``CommandRequest.parameters``):

- ``start_charging``: ``connector_id`` (1.6 connector or 2.0.1 EVSE, default 1), ``id_tag``
  (default ``DERIM``); a ``value`` adds a TxProfile limit to the start request.
- ``stop_charging``: ``transaction_id``, or ``connector_id`` of the running session.
- ``set_power_limit``: ``value`` in ``unit`` kW, W or A; ``connector_id`` (default 0) and
  ``purpose``: ``charger`` (ChargePointMax / ChargingStationMax, connector 0, the default at
  connector 0), ``default`` (TxDefault, for sessions yet to start) or ``transaction``
  (TxProfile of the running session, the default at a connector with one).
- ``clear_power_limit``: the ``purpose`` and ``connector_id`` of the limit to clear.
- ``change_availability``: ``operative`` (bool, required), ``connector_id`` (default 0).
- ``reset``: ``type`` ``soft`` (default) or ``hard``. ``unlock_connector``: ``connector_id``.
- ``get_composite_schedule``: ``connector_id`` (default 0), ``duration_s`` (default 3600),
  ``unit`` W or A (optional).

DERIM owns charging-profile ids ``100 + connector`` (charger), ``200 + connector`` (default),
``300 + connector`` (transaction) and ``400 + connector`` (site share), at stack levels 0, 0, 1
and 2: a site's share of power overrides an operator's per-transaction limit, and a charger
limit caps both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from derim.adapters.ocpp.views import Version
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandType
from derim.models.session import ChargingSession

SessionOn = Callable[[int], ChargingSession | None]
"""The running session on a connector (or EVSE), if any."""

ACCEPTED = frozenset({"Accepted", "Scheduled", "Unlocked"})
"""Answers that mean the charger does (or will do, once idle) what was asked."""


class Purpose(StrEnum):
    """Which DERIM charging profile a limit is."""

    CHARGER = "charger"
    DEFAULT = "default"
    TRANSACTION = "transaction"
    SITE = "site"


_PROFILE_BASE = {
    Purpose.CHARGER: 100,
    Purpose.DEFAULT: 200,
    Purpose.TRANSACTION: 300,
    Purpose.SITE: 400,
}
_STACK_LEVEL = {Purpose.CHARGER: 0, Purpose.DEFAULT: 0, Purpose.TRANSACTION: 1, Purpose.SITE: 2}
_OCPP_PURPOSE: dict[Version, dict[Purpose, str]] = {
    "1.6": {
        Purpose.CHARGER: "ChargePointMaxProfile",
        Purpose.DEFAULT: "TxDefaultProfile",
        Purpose.TRANSACTION: "TxProfile",
        Purpose.SITE: "TxProfile",
    },
    "2.0.1": {
        Purpose.CHARGER: "ChargingStationMaxProfile",
        Purpose.DEFAULT: "TxDefaultProfile",
        Purpose.TRANSACTION: "TxProfile",
        Purpose.SITE: "TxProfile",
    },
}
UNITS = {"kW": ("W", 1000.0), "W": ("W", 1.0), "A": ("A", 1.0)}


@dataclass(frozen=True, slots=True)
class Limit:
    """A power (W) or current (A) limit."""

    value: float
    unit: Literal["W", "A"]


def profile_id(purpose: Purpose, connector_id: int) -> int:
    """DERIM's id of the charging profile of ``purpose`` on a connector."""
    return _PROFILE_BASE[purpose] + connector_id


def limit_of(value: float | None, unit: str) -> Limit:
    """A setpoint in kW, W or A as a charging-rate limit; 422 when absent or negative."""
    if value is None or value < 0:
        raise InvalidRequestError("value", "a power limit needs a value >= 0")
    if unit not in UNITS:
        raise InvalidRequestError("unit", f"a charger limit is in kW, W or A, not {unit!r}")
    ocpp_unit, factor = UNITS[unit]
    return Limit(value * factor, "W" if ocpp_unit == "W" else "A")


def charging_profile(
    version: Version,
    purpose: Purpose,
    connector_id: int,
    limit: Limit,
    transaction_id: str | None = None,
) -> dict[str, Any]:
    """An absolute charging profile holding ``limit`` from now on (snake_case keys)."""
    start = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    # 1.6 schedules carry one decimal; watts are whole anyway.
    amount = round(limit.value, 1) if limit.unit == "A" else round(limit.value)
    period = {"start_period": 0, "limit": amount}
    profile: dict[str, Any] = {
        "stack_level": _STACK_LEVEL[purpose],
        "charging_profile_purpose": _OCPP_PURPOSE[version][purpose],
        "charging_profile_kind": "Absolute",
    }
    if version == "1.6":
        profile["charging_profile_id"] = profile_id(purpose, connector_id)
        profile["charging_schedule"] = {
            "start_schedule": start,
            "charging_rate_unit": limit.unit,
            "charging_schedule_period": [period],
        }
        if transaction_id is not None:
            profile["transaction_id"] = int(transaction_id)
    else:
        profile["id"] = profile_id(purpose, connector_id)
        profile["charging_schedule"] = [
            {
                "id": profile_id(purpose, connector_id),
                "start_schedule": start,
                "charging_rate_unit": limit.unit,
                "charging_schedule_period": [period],
            }
        ]
        if transaction_id is not None:
            profile["transaction_id"] = transaction_id
    return profile


def set_profile(
    version: Version, connector_id: int, profile: dict[str, Any]
) -> call16.SetChargingProfile | call201.SetChargingProfile:
    """The SetChargingProfile CALL installing ``profile`` on a connector (0: the charger)."""
    if version == "1.6":
        return call16.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)
    return call201.SetChargingProfile(evse_id=connector_id, charging_profile=profile)


def clear_profile(
    version: Version, purpose: Purpose, connector_id: int
) -> call16.ClearChargingProfile | call201.ClearChargingProfile:
    """The ClearChargingProfile CALL removing DERIM's profile of ``purpose`` on a connector."""
    if version == "1.6":
        return call16.ClearChargingProfile(id=profile_id(purpose, connector_id))
    return call201.ClearChargingProfile(charging_profile_id=profile_id(purpose, connector_id))


def build_call(version: Version, command: CommandRequest, session_on: SessionOn) -> object:
    """The CALL that carries out ``command``; ``InvalidRequestError`` when it cannot."""
    params = command.parameters
    kind = command.command
    if kind is CommandType.START_CHARGING:
        return _start(version, command, session_on)
    if kind is CommandType.STOP_CHARGING:
        transaction = _transaction(params, session_on)
        if version == "1.6":
            return call16.RemoteStopTransaction(transaction_id=int(transaction))
        return call201.RequestStopTransaction(transaction_id=transaction)
    if kind is CommandType.SET_POWER_LIMIT:
        connector = _int(params, "connector_id", 0)
        purpose = _purpose(params, connector, session_on)
        session = session_on(connector) if purpose is Purpose.TRANSACTION else None
        if purpose is Purpose.TRANSACTION and session is None:
            raise InvalidRequestError(
                "parameters.connector_id", f"connector {connector} has no running session"
            )
        if purpose is Purpose.CHARGER and connector != 0:
            raise InvalidRequestError(
                "parameters.connector_id", "a charger limit applies at connector 0"
            )
        limit = limit_of(command.value, command.unit)
        tx = session.transaction_id if session is not None else None
        return set_profile(
            version, connector, charging_profile(version, purpose, connector, limit, tx)
        )
    if kind is CommandType.CLEAR_POWER_LIMIT:
        connector = _int(params, "connector_id", 0)
        return clear_profile(version, _purpose(params, connector, session_on), connector)
    if kind is CommandType.CHANGE_AVAILABILITY:
        operative = params.get("operative")
        if not isinstance(operative, bool):
            raise InvalidRequestError("parameters.operative", "give true or false")
        status = "Operative" if operative else "Inoperative"
        connector = _int(params, "connector_id", 0)
        if version == "1.6":
            return call16.ChangeAvailability(connector_id=connector, type=status)
        evse = {"id": connector} if connector else None
        return call201.ChangeAvailability(operational_status=status, evse=evse)
    if kind is CommandType.RESET:
        hard = _choice(params, "type", ("soft", "hard"), "soft") == "hard"
        if version == "1.6":
            return call16.Reset(type="Hard" if hard else "Soft")
        return call201.Reset(type="Immediate" if hard else "OnIdle")
    if kind is CommandType.UNLOCK_CONNECTOR:
        connector = _int(params, "connector_id", 1, minimum=1)
        if version == "1.6":
            return call16.UnlockConnector(connector_id=connector)
        return call201.UnlockConnector(evse_id=connector, connector_id=1)
    if kind is CommandType.GET_COMPOSITE_SCHEDULE:
        connector = _int(params, "connector_id", 0)
        duration = _int(params, "duration_s", 3600, minimum=1)
        unit = params.get("unit")
        if unit not in (None, "W", "A"):
            raise InvalidRequestError("parameters.unit", "W or A")
        if version == "1.6":
            return call16.GetCompositeSchedule(
                connector_id=connector, duration=duration, charging_rate_unit=unit
            )
        return call201.GetCompositeSchedule(
            duration=duration, evse_id=connector, charging_rate_unit=unit
        )
    raise InvalidRequestError("command", f"an EV charger does not take {kind.value}")


def _start(version: Version, command: CommandRequest, session_on: SessionOn) -> object:
    params = command.parameters
    connector = _int(params, "connector_id", 1, minimum=1)
    if session_on(connector) is not None:
        raise InvalidRequestError(
            "parameters.connector_id", f"connector {connector} already has a running session"
        )
    id_tag = params.get("id_tag", "DERIM")
    if not isinstance(id_tag, str) or not 1 <= len(id_tag) <= 20:
        raise InvalidRequestError("parameters.id_tag", "1 to 20 characters")
    profile = None
    if command.value is not None:
        limit = limit_of(command.value, command.unit)
        profile = charging_profile(version, Purpose.TRANSACTION, connector, limit)
    if version == "1.6":
        return call16.RemoteStartTransaction(
            id_tag=id_tag, connector_id=connector, charging_profile=profile
        )
    return call201.RequestStartTransaction(
        id_token={"id_token": id_tag, "type": "Central"},
        remote_start_id=int(datetime.now(UTC).timestamp() * 1000) % 2**31,
        evse_id=connector,
        charging_profile=profile,
    )


def _transaction(params: Mapping[str, Any], session_on: SessionOn) -> str:
    """The transaction to stop: given, or the one running on ``connector_id``."""
    given = params.get("transaction_id")
    if given is not None:
        if not isinstance(given, str | int) or isinstance(given, bool):
            raise InvalidRequestError("parameters.transaction_id", "a transaction id")
        return str(given)
    connector = _int(params, "connector_id", 1, minimum=1)
    session = session_on(connector)
    if session is None:
        raise InvalidRequestError(
            "parameters.connector_id", f"connector {connector} has no running session"
        )
    return session.transaction_id


def _purpose(params: Mapping[str, Any], connector: int, session_on: SessionOn) -> Purpose:
    default = (
        Purpose.CHARGER
        if connector == 0
        else Purpose.TRANSACTION
        if session_on(connector) is not None
        else Purpose.DEFAULT
    )
    name = _choice(params, "purpose", ("charger", "default", "transaction"), default.value)
    return Purpose(name)


def _int(params: Mapping[str, Any], name: str, default: int, *, minimum: int = 0) -> int:
    value = params.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= 2**31:
        raise InvalidRequestError(f"parameters.{name}", f"an integer >= {minimum}")
    return value


def _choice(params: Mapping[str, Any], name: str, options: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in options:
        raise InvalidRequestError(f"parameters.{name}", f"one of {', '.join(options)}")
    return str(value)
