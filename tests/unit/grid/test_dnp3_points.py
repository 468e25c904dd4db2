"""The DNP3 point map: configuration checks, readings to input values, outputs to command
requests, and DERIM's outcomes to DNP3 control status codes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dnp3.core.enums import CommandStatus as ControlStatus
from dnp3.core.enums import ControlCode, OperationType, TripCloseCode
from pydantic import ValidationError

from derim.errors import (
    DerimError,
    DeviceRejected,
    InvalidRequestError,
    NotFoundError,
    StorageError,
    TransportError,
)
from derim.grid.dnp3.config import (
    AnalogInputPoint,
    AnalogOutputPoint,
    BinaryInputPoint,
    BinaryOutputPoint,
    Dnp3Config,
)
from derim.grid.dnp3.points import (
    AnalogValue,
    BinaryValue,
    analog_value,
    binary_value,
    combined_status,
    error_status,
    result_status,
    setpoint_request,
    snapshot,
    switch_command,
    target_ids,
    watched_ids,
)
from derim.grid.fleet import fresh
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.device import DERDevice

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FLEET = [
    DERDevice(id="pv", groups=["site"]),
    DERDevice(id="bat", groups=["site"]),
    DERDevice(id="meter"),
]


def reading(age_s: float = 1.0, **fields: object) -> dict[str, object]:
    return {"timestamp": NOW - timedelta(seconds=age_s), **fields}


def record(status: CommandStatus) -> CommandResult:
    request = CommandRequest(command=CommandType.CONNECT)
    return CommandResult(device_id="pv", request=request, status=status)


@pytest.mark.parametrize(
    "point",
    [
        {"index": 0, "field": "power_kw"},
        {"index": 0, "field": "power_kw", "device": "pv", "group": "site"},
        {"index": 0, "field": "state", "device": "pv"},
        {"index": 0, "field": "power_kw", "device": "pv", "scale": 0},
        {"index": 70000, "field": "power_kw", "device": "pv"},
    ],
)
def test_an_analog_input_needs_one_target_a_numeric_field_and_a_positive_scale(
    point: dict[str, Any],
) -> None:
    """Neither or both of device/group, a text field, a zero scale or an index past 65535
    are refused."""
    with pytest.raises(ValidationError):
        AnalogInputPoint.model_validate(point)


def test_outputs_carry_only_commands_of_their_kind() -> None:
    """An analog output takes a setpoint command, a CROB a valueless switching command."""
    with pytest.raises(ValidationError, match="analog output carries"):
        AnalogOutputPoint(index=0, device="pv", command=CommandType.CONNECT)
    with pytest.raises(ValidationError, match="control relay output carries"):
        BinaryOutputPoint(index=0, device="pv", on=CommandType.SET_POWER_LIMIT)


def test_an_index_is_used_once_per_point_type() -> None:
    """Two binary inputs at index 3 are refused; the same index in two tables is fine."""
    with pytest.raises(ValidationError, match="binary_inputs: index 3"):
        Dnp3Config.model_validate(
            {
                "binary_inputs": [
                    {"index": 3, "device": "pv", "kind": "online"},
                    {"index": 3, "device": "bat", "kind": "online"},
                ]
            }
        )
    Dnp3Config.model_validate(
        {
            "binary_inputs": [{"index": 3, "device": "pv", "kind": "online"}],
            "analog_inputs": [{"index": 3, "device": "pv", "field": "power_kw"}],
        }
    )


def test_targets_resolve_to_registered_devices_in_registry_order() -> None:
    """A device target is itself if registered, a group its members; unknown ones nothing."""
    assert target_ids(BinaryInputPoint(index=0, group="site", kind="online"), FLEET) == [
        "pv",
        "bat",
    ]
    assert target_ids(BinaryInputPoint(index=0, device="meter", kind="online"), FLEET) == ["meter"]
    assert target_ids(BinaryInputPoint(index=0, device="gone", kind="online"), FLEET) == []


def test_only_fresh_readings_count() -> None:
    """A reading older than ``stale_after_s``, or without a timestamp, is left out."""
    latest = {"pv": reading(5), "bat": reading(61), "meter": {"power_kw": 1.0}}
    assert list(fresh(latest, NOW, 60)) == ["pv"]


def test_a_group_sum_is_scaled_and_online_when_every_member_reported() -> None:
    """2.5 kW + -1.2 kW is 1300 W at scale 1000, online while both readings are fresh."""
    point = AnalogInputPoint(index=4, group="site", field="power_kw", scale=1000)
    readings = {"pv": reading(power_kw=2.5), "bat": reading(power_kw=-1.2)}
    assert analog_value(point, ["pv", "bat"], readings) == AnalogValue(4, 1300, True)


def test_a_missing_member_leaves_a_partial_value_marked_offline() -> None:
    """A member without a fresh reading makes the point offline; the value covers the rest."""
    point = AnalogInputPoint(index=0, group="site", field="power_kw")
    assert analog_value(point, ["pv", "bat"], {"pv": reading(power_kw=2.0)}) == AnalogValue(
        0, 2, False
    )
    assert analog_value(point, ["pv", "bat"], {}) == AnalogValue(0, None, False)
    assert analog_value(point, [], {}) == AnalogValue(0, None, False)


def test_members_without_the_field_are_left_out_of_a_mean() -> None:
    """A group's mean SoC is taken over the members that report one (not the PV inverter)."""
    point = AnalogInputPoint(index=1, group="site", field="soc_percent", aggregate="mean")
    readings = {"pv": reading(power_kw=3.0), "bat": reading(soc_percent=40.0)}
    assert analog_value(point, ["pv", "bat"], readings) == AnalogValue(1, 40, True)


@pytest.mark.parametrize(("aggregate", "expected"), [("min", -2), ("max", 5), ("sum", 3)])
def test_aggregates_combine_members(aggregate: str, expected: int) -> None:
    """min, max and sum over two members' power."""
    point = AnalogInputPoint.model_validate(
        {"index": 0, "group": "site", "field": "power_kw", "aggregate": aggregate}
    )
    readings = {"pv": reading(power_kw=5.0), "bat": reading(power_kw=-2.0)}
    assert analog_value(point, ["pv", "bat"], readings).value == expected


def test_online_and_connected_binary_inputs() -> None:
    """Online needs a fresh reading from every member; connected needs every member in a
    grid-connected state (standby is not), and is unknown (offline) without states."""
    online = BinaryInputPoint(index=0, group="site", kind="online")
    connected = BinaryInputPoint(index=1, group="site", kind="connected")
    both = {"pv": reading(state="on"), "bat": reading(state="charging")}
    standby = {"pv": reading(state="standby"), "bat": reading(state="charging")}
    stateless = {"pv": reading(), "bat": reading(state="on")}
    assert binary_value(online, ["pv", "bat"], both) == BinaryValue(0, True, True)
    assert binary_value(online, ["pv", "bat"], {"pv": both["pv"]}) == BinaryValue(0, False, True)
    assert binary_value(connected, ["pv", "bat"], both) == BinaryValue(1, True, True)
    assert binary_value(connected, ["pv", "bat"], standby) == BinaryValue(1, False, True)
    assert binary_value(connected, ["pv", "bat"], stateless) == BinaryValue(1, False, False)
    assert binary_value(online, [], {}) == BinaryValue(0, False, False)


def test_a_snapshot_covers_every_input_from_the_latest_readings() -> None:
    """Each configured input gets its value; only devices some input reads are watched."""
    config = Dnp3Config.model_validate(
        {
            "stale_after_s": 30,
            "analog_inputs": [{"index": 0, "device": "pv", "field": "energy_kwh"}],
            "binary_inputs": [{"index": 5, "device": "bat", "kind": "online"}],
        }
    )
    latest = {"pv": reading(energy_kwh=1234.4), "bat": reading(age_s=31)}
    values = snapshot(config, FLEET, latest, NOW)
    assert values.analogs == [AnalogValue(0, 1234, True)]
    assert values.binaries == [BinaryValue(5, False, True)]
    assert watched_ids(config, FLEET) == ["pv", "bat"]


def test_a_setpoint_is_the_wire_value_over_the_scale_from_source_dnp3() -> None:
    """4500 at scale 1000 is a 4.5 kW limit from dnp3 lapsing at the given time."""
    point = AnalogOutputPoint(index=0, device="pv", scale=1000)
    request = setpoint_request(point, 4500, NOW)
    assert (request.command, request.value, request.unit) == (
        CommandType.SET_POWER_LIMIT,
        4.5,
        "kW",
    )
    assert request.source == "dnp3"
    assert request.expires_at == NOW


def test_a_setpoint_that_is_not_a_number_is_refused() -> None:
    """NaN or infinity from a float analog output cannot become a command."""
    point = AnalogOutputPoint(index=0, device="pv")
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number"):
            setpoint_request(point, value, None)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ControlCode.LATCH_ON, CommandType.CONNECT),
        (ControlCode.LATCH_OFF, CommandType.DISCONNECT),
        (ControlCode.CLOSE_PULSE_ON, CommandType.CONNECT),
        (ControlCode.TRIP_PULSE_ON, CommandType.DISCONNECT),
        (ControlCode.PULSE_ON, None),
        (ControlCode.PULSE_OFF, None),
        (ControlCode.NUL, None),
        (ControlCode.from_fields(OperationType.LATCH_ON, clear=True), None),
        (ControlCode.from_fields(OperationType.LATCH_ON, tcc=TripCloseCode.TRIP), None),
    ],
)
def test_crob_codes_switch_on_or_off(code: ControlCode, expected: CommandType | None) -> None:
    """Latch on / close switch on, latch off / trip switch off, anything else is refused."""
    assert switch_command(BinaryOutputPoint(index=0, device="pv"), code) is expected


def test_a_crob_point_may_carry_other_switching_commands() -> None:
    """A charger's CROB can start and stop charging instead."""
    point = BinaryOutputPoint(
        index=0, device="ev", on=CommandType.START_CHARGING, off=CommandType.STOP_CHARGING
    )
    assert switch_command(point, ControlCode.LATCH_OFF) is CommandType.STOP_CHARGING


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (CommandStatus.ACKNOWLEDGED, ControlStatus.SUCCESS),
        (CommandStatus.VALIDATED, ControlStatus.SUCCESS),
        (CommandStatus.SENT, ControlStatus.TIMEOUT),
        (CommandStatus.TIMED_OUT, ControlStatus.TIMEOUT),
        (CommandStatus.REJECTED, ControlStatus.HARDWARE_ERROR),
        (CommandStatus.FAILED, ControlStatus.DOWNSTREAM_FAIL),
        (CommandStatus.EXPIRED, ControlStatus.CANCELLED),
    ],
)
def test_record_statuses_map_to_control_statuses(
    status: CommandStatus, expected: ControlStatus
) -> None:
    """Only an acknowledged command (or a validated select) is SUCCESS."""
    assert result_status(record(status)) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidRequestError("value", "9 kW exceeds the rating"), ControlStatus.OUT_OF_RANGE),
        (InvalidRequestError("command", "no model 704"), ControlStatus.NOT_SUPPORTED),
        (NotFoundError("device", "pv"), ControlStatus.NOT_SUPPORTED),
        (TransportError("connection refused"), ControlStatus.DOWNSTREAM_FAIL),
        (DeviceRejected("exception code 4"), ControlStatus.HARDWARE_ERROR),
        (StorageError("disk full"), ControlStatus.HARDWARE_ERROR),
    ],
)
def test_errors_map_to_control_statuses(error: DerimError, expected: ControlStatus) -> None:
    """Out-of-limits, unsupported, unreachable and refused commands each get their code."""
    assert error_status(error) is expected


def test_a_group_succeeds_only_if_every_member_did() -> None:
    """The first failure wins; no member at all is NOT_SUPPORTED."""
    ok, busy, gone = ControlStatus.SUCCESS, ControlStatus.TIMEOUT, ControlStatus.DOWNSTREAM_FAIL
    assert combined_status([ok, ok]) is ok
    assert combined_status([ok, busy, gone]) is busy
    assert combined_status([]) is ControlStatus.NOT_SUPPORTED


def test_an_outstation_without_points_is_refused() -> None:
    """A DNP3 block that maps no point at all is a configuration error, not a hung master."""
    with pytest.raises(ValidationError, match="at least one point"):
        Dnp3Config()
