"""The pure Modbus codec: read planning, decoding, scaling, sentinels and write encoding."""

from __future__ import annotations

import math
import struct

import pytest

from derim.adapters.modbus import (
    MISSING,
    ControlPoint,
    Point,
    Profile,
    ReadRequest,
    apply_scale,
    decode_block,
    decode_point,
    decode_reading,
    encode_write,
    load_profile_text,
    plan_reads,
    shipped_profile,
)
from derim.errors import ConfigError, InvalidRequestError, ProtocolError
from derim.models.common import OperatingState

FORMATS = {
    "u16": "H",
    "s16": "h",
    "u32": "I",
    "s32": "i",
    "u64": "Q",
    "s64": "q",
    "f32": "f",
    "f64": "d",
}
SAMPLES = {
    "u16": 0xBEEF,
    "s16": -12345,
    "u32": 0xDEADBEEF,
    "s32": -123456789,
    "u64": 0x0123456789ABCDEF,
    "s64": -0x0123456789ABCDEF,
    "f32": -1234.5,
    "f64": math.pi,
}
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def to_registers(value: float, data_type: str, word_order: str, byte_order: str) -> list[int]:
    """Registers holding ``value``, built with ``struct`` independently of the codec."""
    packed = struct.pack(">" + FORMATS[data_type], value)
    pairs = [packed[i : i + 2] for i in range(0, len(packed), 2)]
    if byte_order == "little":
        pairs = [pair[::-1] for pair in pairs]
    if word_order == "little":
        pairs.reverse()
    return [int.from_bytes(pair, "big") for pair in pairs]


def point(address: int = 0, data_type: str = "u16", **extra: object) -> Point:
    """A point named after its address."""
    return Point.model_validate(
        {"name": f"p{address}", "address": address, "data_type": data_type, **extra}
    )


def image(profile: Profile, values: dict[int, int]) -> dict[ReadRequest, list[int]]:
    """A register image for ``profile``'s read plan: ``values`` by address, zero elsewhere."""
    plan = plan_reads(profile.points, profile.read.max_registers, profile.read.max_gap)
    return {r: [values.get(a, 0) for a in range(r.address, r.end)] for r in plan}


def test_plan_coalesces_adjacent_points_into_one_request() -> None:
    """Adjacent points of one register type and unit become a single read."""
    points = [point(0), point(1, "u32"), point(3, "f64")]
    assert plan_reads(points, 125, 0) == [ReadRequest("holding", None, 0, 7)]


def test_plan_bridges_small_gaps_only() -> None:
    """A gap of max_gap registers is bridged; one register more starts a new request."""
    assert plan_reads([point(0), point(11)], 125, 10) == [ReadRequest("holding", None, 0, 12)]
    assert plan_reads([point(0), point(12)], 125, 10) == [
        ReadRequest("holding", None, 0, 1),
        ReadRequest("holding", None, 12, 1),
    ]


def test_plan_respects_max_registers_without_splitting_points() -> None:
    """No request exceeds max_registers, and a point crossing the limit moves to the next read."""
    points = [point(0), point(1), point(2), point(3, "u32")]
    assert plan_reads(points, 4, 0) == [
        ReadRequest("holding", None, 0, 3),
        ReadRequest("holding", None, 3, 2),
    ]


def test_plan_separates_register_types_and_units() -> None:
    """Holding and input registers, and different unit ids, are never read together."""
    points = [point(0), point(1, register_type="input"), point(2, unit_id=3)]
    assert sorted(plan_reads(points, 125, 10), key=lambda r: r.address) == [
        ReadRequest("holding", None, 0, 1),
        ReadRequest("input", None, 1, 1),
        ReadRequest("holding", 3, 2, 1),
    ]


def test_plan_handles_overlapping_points_and_refuses_too_wide_ones() -> None:
    """A point inside another's registers adds no read; a point wider than a request is refused."""
    assert plan_reads([point(0, "u64"), point(1)], 125, 0) == [ReadRequest("holding", None, 0, 4)]
    with pytest.raises(ConfigError, match="wider than 2 registers"):
        plan_reads([point(0, "u64")], 2, 0)


@pytest.mark.parametrize("data_type", list(SAMPLES))
@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
def test_decode_every_type_in_every_order(data_type: str, word_order: str, byte_order: str) -> None:
    """Each data type decodes in all four word/byte layouts to the value struct encoded."""
    registers = to_registers(SAMPLES[data_type], data_type, word_order, byte_order)
    spec = point(data_type=data_type, word_order=word_order, byte_order=byte_order)
    assert decode_point(registers, spec) == SAMPLES[data_type]


def test_the_four_layouts_differ() -> None:
    """The sample values are asymmetric, so a swapped layout cannot decode by accident."""
    layouts = {tuple(to_registers(SAMPLES["u32"], "u32", w, b)) for w, b in ORDERS}
    assert len(layouts) == 4


@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_decode_string_trims_padding(byte_order: str) -> None:
    """A NUL-padded string decodes in either byte order; text after the first NUL is dropped."""
    raw = b"SN-12345\x00\x00junk".ljust(16, b"\x00")
    pairs = [raw[i : i + 2] for i in range(0, 16, 2)]
    if byte_order == "little":
        pairs = [pair[::-1] for pair in pairs]
    registers = [int.from_bytes(pair, "big") for pair in pairs]
    spec = point(data_type="string", length=8, byte_order=byte_order)
    assert decode_point(registers, spec) == "SN-12345"


@pytest.mark.parametrize(
    ("registers", "spec", "complaint"),
    [
        ([1], point(data_type="u32"), "expected 2 registers, got 1"),
        ([1, 2, 3], point(data_type="u32"), "expected 2 registers, got 3"),
        ([65536], point(), "outside 0..65535"),
        ([-1], point(), "outside 0..65535"),
        (to_registers(math.nan, "f32", "big", "big"), point(data_type="f32"), "not a finite"),
        (to_registers(-math.inf, "f64", "big", "big"), point(data_type="f64"), "not a finite"),
        ([0xFFFE], point(data_type="string", length=1), "not UTF-8"),
    ],
)
def test_undecodable_values_raise_protocol_error(
    registers: list[int], spec: Point, complaint: str
) -> None:
    """Short images, out-of-range registers, NaN/inf and bad strings raise ProtocolError."""
    with pytest.raises(ProtocolError, match=complaint):
        decode_point(registers, spec)


def test_sentinel_bit_patterns_become_missing() -> None:
    """A not-implemented bit pattern is MISSING, matched after word-order normalisation."""
    spec = point(data_type="s32", word_order="little", not_implemented=[0x80000000])
    assert decode_point([0x0000, 0x8000], spec) is MISSING
    assert decode_point([0x8000, 0x0000], spec) == 0x8000
    nan = point(data_type="f32", not_implemented=[0x7FC00000])
    assert decode_point([0x7FC0, 0], nan) is MISSING


def test_decode_block_picks_its_points_and_checks_the_length() -> None:
    """A block decodes the points it covers and refuses a response of the wrong length."""
    request = ReadRequest("holding", None, 10, 3)
    points = [point(10), point(11, "s16"), point(20), point(12, register_type="input")]
    assert decode_block(request, [7, 0xFFFF, 0], points) == {"p10": 7, "p11": -1}
    with pytest.raises(ProtocolError, match="expected 3 registers, got 2"):
        decode_block(request, [7, 8], points)


def test_decimal_scales_give_exact_decimals() -> None:
    """A factor such as 0.001 or 10**-1 divides, so the reading is the decimal the device meant."""
    assert apply_scale(-950, 0.001) == -0.95
    assert apply_scale(2301, 1.0, -1) == 230.1
    assert apply_scale(453, 0.1) == 45.3
    assert apply_scale(3, 0.25) == 0.75


def test_apply_scale() -> None:
    """Scale, power-of-ten factor and offset combine; a missing raw or factor is MISSING."""
    assert apply_scale(475, 0.01, 1) == pytest.approx(47.5)
    assert apply_scale(475, 1.0, -2, offset=1) == pytest.approx(5.75)
    assert apply_scale(MISSING, 1.0) is MISSING
    assert apply_scale(475, 1.0, MISSING) is MISSING
    with pytest.raises(ProtocolError, match="scale factor 21"):
        apply_scale(1, 1.0, 21)
    with pytest.raises(ProtocolError, match="not a finite"):
        apply_scale(1e300, 1e10)


def test_meter_reading_uses_scale_factors_from_the_same_image() -> None:
    """Changing a scale-factor register between two images changes the decoded value."""
    meter = shipped_profile("generic_meter")
    values = {0: 2301, 1: 0xFFFF, 2: 125, 3: 0xFFFE, 4: 5000, 5: 950, 6: 0xFFFF, 7: 0xED68}
    values |= {20: 1500, 24: 0x4240, 25: 0x000F}
    first = decode_reading(meter, image(meter, values)).fields
    assert first["voltage_v"] == pytest.approx(230.1)
    assert first["current_a"] == pytest.approx(1.25)
    assert first["frequency_hz"] == pytest.approx(50.0)
    assert first["power_factor"] == pytest.approx(0.95)
    assert first["power_kw"] == pytest.approx(4.76)
    assert first["energy_import_kwh"] == pytest.approx(1.5)
    assert first["energy_export_kwh"] == pytest.approx(1000.0)
    second = decode_reading(meter, image(meter, values | {1: 0})).fields
    assert second["voltage_v"] == pytest.approx(2301.0)


def test_sentinels_make_fields_missing() -> None:
    """A sentinel in a value or in its scale factor makes the canonical field None."""
    meter = shipped_profile("generic_meter")
    fields = decode_reading(meter, image(meter, {1: 0x8000, 2: 0xFFFF, 5: 0x8000})).fields
    assert fields["voltage_v"] is None
    assert fields["current_a"] is None
    assert fields["power_factor"] is None
    assert fields["frequency_hz"] == 0.0


def test_battery_state_enum_maps_codes() -> None:
    """State codes map to canonical OperatingState values; nothing is reported unmapped."""
    battery = shipped_profile("generic_battery")
    reading = decode_reading(battery, image(battery, {2: 805, 5: 2, 6: 5000, 7: 0}))
    assert reading.fields["state"] == "charging"
    assert reading.fields["soc_percent"] == pytest.approx(80.5)
    assert reading.fields["charge_rate_kw"] == pytest.approx(5.0)
    assert reading.unmapped == {}


def test_unmapped_state_code_reads_unknown_and_is_reported() -> None:
    """A code missing from the map reads as OperatingState.UNKNOWN; the other fields decode."""
    battery = shipped_profile("generic_battery")
    reading = decode_reading(battery, image(battery, {2: 805, 5: 42}))
    assert reading.fields["state"] == OperatingState.UNKNOWN.value
    assert reading.fields["soc_percent"] == pytest.approx(80.5)
    assert reading.unmapped == {"operating_state": 42}


def test_unmapped_connector_code_leaves_the_status_out() -> None:
    """ConnectorStatus has no unknown member: an unmapped code gives None, not a made-up status."""
    charger = load_profile_text(
        "name: charger\n"
        "device_type: ev_charger\n"
        "blocks:\n"
        "  - points:\n"
        "      - name: status\n"
        "        address: 0\n"
        "        data_type: u16\n"
        "        field: connector_status\n"
        "        enum: {0: available, 1: charging}\n"
    )
    assert decode_reading(charger, image(charger, {0: 1})).fields == {
        "connector_status": "charging"
    }
    reading = decode_reading(charger, image(charger, {0: 9}))
    assert reading.fields == {"connector_status": None}
    assert reading.unmapped == {"status": 9}


def test_reading_needs_every_fed_point_in_the_image() -> None:
    """An image missing the request of a fed point raises ProtocolError, not KeyError."""
    battery = shipped_profile("generic_battery")
    partial = {r: regs for r, regs in image(battery, {}).items() if r.register_type == "holding"}
    with pytest.raises(ProtocolError, match="does not cover point 'active_power'"):
        decode_reading(battery, partial)


def test_encode_setpoint_within_limits() -> None:
    """A kW setpoint becomes the scaled register value, negative values in two's complement."""
    setpoint = next(c for c in shipped_profile("generic_battery").controls if c.min is not None)
    assert encode_write(setpoint, 2.5) == [250]
    assert encode_write(setpoint, -5) == [0x10000 - 500]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (5.01, "active_power_setpoint: 5.01 kW is above the maximum 5.0 kW"),
        (-6, "active_power_setpoint: -6 kW is below the minimum -5.0 kW"),
        (math.nan, "is not a finite number"),
        ("enable", "is not a finite number"),
        (True, "is not a finite number"),
    ],
)
def test_encode_setpoint_outside_limits(value: float | str, complaint: str) -> None:
    """Values beyond the limits or not numbers raise InvalidRequestError naming point and limit."""
    setpoint = next(c for c in shipped_profile("generic_battery").controls if c.min is not None)
    with pytest.raises(InvalidRequestError, match=complaint) as info:
        encode_write(setpoint, value)
    assert info.value.field == "active_power_setpoint"


def test_encode_choices() -> None:
    """A choice word maps to its register value; anything else names the accepted choices."""
    enable = next(c for c in shipped_profile("generic_battery").controls if c.choices)
    assert encode_write(enable, "disconnect") == [0]
    with pytest.raises(
        InvalidRequestError, match=r"enable: must be one of \['connect', 'disconnect'\]"
    ):
        encode_write(enable, 1)


@pytest.mark.parametrize("data_type", ["s32", "f32", "u64", "f64"])
@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
def test_encode_matches_struct_layout(data_type: str, word_order: str, byte_order: str) -> None:
    """Written registers follow the control's word and byte order exactly as struct lays them."""
    control = ControlPoint(
        name="c",
        address=0,
        data_type=data_type,
        word_order=word_order,
        byte_order=byte_order,
        min=0,
        max=1e6,
    )
    value = 1234.5 if data_type.startswith("f") else 123456
    assert encode_write(control, value) == to_registers(value, data_type, word_order, byte_order)
