"""Pure IEC 61850 conversions: values, qualities, readings and setpoints; Hypothesis fuzzing."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.iec61850 import ControlPoint, Point, Profile, shipped_profile
from derim.adapters.iec61850.decode import (
    AccessFailure,
    decode_point,
    decode_quality,
    decode_reading,
    encode_setpoint,
    read_back_matches,
    read_targets,
    split_read,
)
from derim.errors import ConfigError, InvalidRequestError, ProtocolError
from derim.models.common import Quality

PROFILE = shipped_profile("generic_der_battery")
GOOD_Q = b"\x00\x00"
FUZZ = settings(max_examples=200, deadline=None)


def raw_values(**overrides: object) -> dict[str, object]:
    """A plausible raw value for every point of the shipped profile."""
    values: dict[str, object] = {
        "active_power": 2500.0,
        "reactive_power": -300.0,
        "frequency": 50.0,
        "voltage_a": 230.0,
        "current_a": 10.0,
        "state_of_charge": 55.5,
        "behaviour": 1,
    }
    return values | overrides


def good_qualities() -> dict[str, object]:
    return {ref: GOOD_Q for ref, _ in read_targets(PROFILE)[len(PROFILE.points) :]}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x00\x00", Quality.GOOD),
        (b"\x40\x00", Quality.INVALID),
        (b"\xc0\x00", Quality.QUESTIONABLE),
        (b"\x80\x00", Quality.QUESTIONABLE),
        (b"\x00\x20", Quality.SUBSTITUTED),
        (b"\x00\x10", Quality.QUESTIONABLE),
        (b"\x02\x00", Quality.GOOD),
    ],
)
def test_quality_bits_map_to_canonical_quality(raw: bytes, expected: Quality) -> None:
    """Validity (bits 0-1), substituted (bit 10) and test (bit 11) set the quality; detail
    bits alone (such as oldData, bit 7 in the first byte) do not."""
    assert decode_quality(raw) is expected


def test_reading_is_scaled_into_canonical_fields() -> None:
    """W become kW, the Beh ordinal becomes an operating state, and the reading is good."""
    reading = decode_reading(PROFILE, raw_values(), good_qualities())
    assert reading.fields["power_kw"] == pytest.approx(2.5)
    assert reading.fields["reactive_power_kvar"] == pytest.approx(-0.3)
    assert reading.fields["soc_percent"] == pytest.approx(55.5)
    assert reading.fields["state"] == "on"
    assert reading.quality is Quality.GOOD
    assert reading.problems == {}


def test_invalid_quality_drops_the_value_and_flags_the_reading() -> None:
    """A measurand marked invalid is left out; the reading is questionable, not invalid."""
    qualities = good_qualities() | {"DER/MMXU1.Hz.q": b"\x40\x00"}
    reading = decode_reading(PROFILE, raw_values(), qualities)
    assert "frequency_hz" not in reading.fields
    assert reading.quality is Quality.QUESTIONABLE
    assert reading.problems == {"frequency": "quality invalid"}


@pytest.mark.parametrize("raw", [math.nan, "garbage", None, [1.0]])
def test_invalid_quality_point_is_dropped_whatever_its_value(raw: object) -> None:
    """A point whose quality is invalid is left out without decoding its value, so a value
    of the wrong kind there cannot fail the poll."""
    qualities = good_qualities() | {"DER/MMXU1.TotW.q": b"\x40\x00"}
    reading = decode_reading(PROFILE, raw_values(active_power=raw), qualities)
    assert "power_kw" not in reading.fields
    assert reading.fields["frequency_hz"] == pytest.approx(50.0)
    assert reading.problems == {"active_power": "quality invalid"}


def test_refused_point_and_unknown_ordinal_degrade_only_their_field() -> None:
    """An attribute the IED refuses is left out, an unmapped ordinal reads unknown."""
    values = raw_values(state_of_charge=AccessFailure("ObjectNonExistent"), behaviour=9)
    reading = decode_reading(PROFILE, values, good_qualities())
    assert "soc_percent" not in reading.fields
    assert reading.fields["state"] == "unknown"
    assert reading.fields["power_kw"] == pytest.approx(2.5)
    assert reading.quality is Quality.QUESTIONABLE
    assert set(reading.problems) == {"state_of_charge", "behaviour"}


def test_every_point_refused_fails_the_poll() -> None:
    """When nothing could be read the poll fails, naming why."""
    values = {name: AccessFailure("ObjectAccessDenied") for name in raw_values()}
    with pytest.raises(ProtocolError, match="ObjectAccessDenied"):
        decode_reading(PROFILE, values, good_qualities())


@pytest.mark.parametrize("raw", ["2500", True, None, [2500.0], b"\x00", math.nan, 10**400])
def test_wrong_kind_of_value_is_a_protocol_error(raw: object) -> None:
    """A string, bool, structure or non-finite number where a float belongs is refused."""
    with pytest.raises(ProtocolError, match="active_power"):
        decode_point(PROFILE.points[0], raw)


def test_split_read_checks_the_answer_length() -> None:
    """An answer with fewer values than asked for is a protocol error, not a misalignment."""
    with pytest.raises(ProtocolError, match="asked for"):
        split_read(PROFILE, [1.0, 2.0])


def test_setpoints_are_encoded_in_the_wire_unit_within_limits() -> None:
    """3.5 kW is written as 3500 W to an int setpoint; out-of-range and bad choices refused."""
    limit, power, enable = PROFILE.controls
    assert encode_setpoint(limit, 3.5) == 3500
    assert encode_setpoint(power, -2.25) == -2250
    assert encode_setpoint(enable, "disconnect") is False
    with pytest.raises(InvalidRequestError, match=r"maximum 10\.0"):
        encode_setpoint(limit, 10.5)
    with pytest.raises(InvalidRequestError, match="takes one of"):
        encode_setpoint(enable, "explode")


def test_read_back_comparison_allows_float32_rounding_only() -> None:
    """Without a tolerance a FLOAT32 echo of 0.1 matches; another value, or a bool for an
    int, does not."""
    limit, power, enable = PROFILE.controls
    assert read_back_matches(power, 0.1, 0.10000000149011612)
    assert not read_back_matches(limit, 3500, 3000)
    assert not read_back_matches(limit, 1, True)
    assert read_back_matches(enable, True, True)


def test_read_back_comparison_allows_the_setpoints_tolerance_in_its_unit() -> None:
    """A 0.005 kW tolerance on a W setpoint (scale 0.001) accepts an echo rounded to 10 W,
    not one 6 W off."""
    power = PROFILE.controls[1].model_copy(update={"tolerance": 0.005})
    assert read_back_matches(power, 1234.0, 1230.0)
    assert read_back_matches(power, -1234.0, -1230.0)
    assert not read_back_matches(power, 1234.0, 1240.0)
    assert not read_back_matches(PROFILE.controls[1], 1234.0, 1230.0)


def test_setpoint_without_limits_is_a_config_error() -> None:
    """A numeric setpoint lacking min or max (built past validation) is refused with
    ConfigError, not an assert that -O removes."""
    unchecked = ControlPoint.model_construct(**(PROFILE.controls[0].model_dump() | {"max": None}))
    with pytest.raises(ConfigError, match="max_power_setpoint"):
        encode_setpoint(unchecked, 1.0)


mms_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=10),
    st.binary(min_size=2, max_size=2),
    st.lists(st.floats(), max_size=3),
    st.builds(AccessFailure, st.sampled_from(["ObjectNonExistent", "HardwareFault"])),
)
"""Anything the MMS client can hand over for one attribute."""


@FUZZ
@given(raw=mms_values, scale=st.floats(-1e6, 1e6).filter(lambda s: s != 0))
def test_fuzzed_point_value_decodes_or_raises_protocol_error(raw: object, scale: float) -> None:
    """Any value for a float point is a finite number or a ProtocolError, nothing else."""
    point = Point(name="p", ref="LD/LN1.DO.da", fc="MX", type="float", scale=scale)
    try:
        value = decode_point(point, raw)
    except ProtocolError:
        return
    assert isinstance(value, float)
    assert math.isfinite(value)


@FUZZ
@given(raw=mms_values)
def test_fuzzed_quality_decodes_or_raises_protocol_error(raw: object) -> None:
    """Any value for a q attribute is a canonical quality or a ProtocolError."""
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_quality(raw), Quality)


TARGETS = len(read_targets(PROFILE))
answers = st.one_of(
    st.lists(mms_values, min_size=TARGETS, max_size=TARGETS),
    st.lists(mms_values, max_size=TARGETS + 2),
)
"""Answers to a poll: mostly the right length, sometimes not."""


@FUZZ
@given(answer=answers)
def test_fuzzed_poll_answer_decodes_or_raises_protocol_error(answer: list[object]) -> None:
    """Any answer to a poll's read decodes into canonical fields or raises ProtocolError."""
    profile: Profile = PROFILE
    try:
        values, qualities = split_read(profile, answer)
        reading = decode_reading(profile, values, qualities)
    except ProtocolError:
        return
    assert reading.quality in Quality
    for value in reading.fields.values():
        assert isinstance(value, str) or math.isfinite(value)  # type: ignore[arg-type]
