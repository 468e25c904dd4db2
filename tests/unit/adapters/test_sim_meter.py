"""The simulated meter's register image, decoded back through the shipped generic_meter profile."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.modbus import decode_point, decode_reading, plan_reads, shipped_profile
from derim.sim.meter import IMAGE_SIZE, MeterValues, meter_image

METER = shipped_profile("generic_meter")
STEP = 0.001
"""Resolution of power (kW, kvar), energy (kWh) and power factor in the image."""


def decoded(values: MeterValues) -> tuple[dict[str, object], object]:
    """Canonical fields and serial number decoded from the image as the ModbusAdapter does."""
    registers = meter_image(values)
    assert len(registers) == IMAGE_SIZE
    plan = plan_reads(METER.points, METER.read.max_registers, METER.read.max_gap)
    reading = decode_reading(METER, {r: registers[r.address : r.end] for r in plan})
    serial = next(point for point in METER.points if point.name == "serial_number")
    return dict(reading.fields), decode_point(registers[100:108], serial)


def assert_round_trip(values: MeterValues) -> None:
    """Every quantity comes back within its register resolution; voltage and current within
    the finer of 0.5 mV (mA) and 1e-4 relative (the finest scale factor that fits)."""
    fields, serial = decoded(values)
    given_fields = dataclasses.asdict(values)
    assert serial == given_fields.pop("serial_number")
    assert fields.keys() == given_fields.keys()
    for name, value in given_fields.items():
        if name in ("voltage_v", "current_a"):
            assert fields[name] == pytest.approx(value, rel=1e-4, abs=0.51 * STEP), name
        elif name == "frequency_hz":
            assert fields[name] == pytest.approx(value, abs=0.0051), name
        else:
            assert fields[name] == pytest.approx(value, abs=0.51 * STEP), name


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(
            MeterValues(4.76, -1.2, 230.1, 20.7, 50.02, 0.97, 1234.567, 8901.234, "SN-0001"),
            id="exporting",
        ),
        pytest.param(
            MeterValues(-7.25, 2.5, 229.4, 31.5, 49.98, -0.91, 1500.0, 20.0, "SN-0002"),
            id="importing",
        ),
        pytest.param(
            MeterValues(
                energy_import_kwh=5_000_000.123,
                energy_export_kwh=12_345_678.901,
                serial_number="0123456789ABCDEF",
            ),
            id="counters-beyond-32-bits",
        ),
        pytest.param(MeterValues(power_kw=-830.0, voltage_v=400.0, current_a=1200.0), id="large"),
        pytest.param(MeterValues(voltage_v=0.0, power_factor=0.0, serial_number=""), id="zeros"),
    ],
)
def test_image_decodes_to_the_values_given(values: MeterValues) -> None:
    """The profile and codec the ModbusAdapter uses read back what the image was built from."""
    assert_round_trip(values)


def test_the_meter_counts_import_positive_and_energy_low_word_first() -> None:
    """On the wire, importing 7.25 kW is +7250 W; 2**32 + 5 Wh has its low word first."""
    image = meter_image(MeterValues(power_kw=-7.25, energy_import_kwh=(2**32 + 5) / 1000))
    assert struct.unpack(">i", struct.pack(">HH", *image[6:8])) == (7250,)
    assert image[20:24] == [5, 0, 1, 0]


def test_current_beyond_one_register_gets_a_coarser_scale_factor() -> None:
    """1200 A does not fit 0.01 A steps in a u16; the meter switches to 0.1 A (factor -1)."""
    image = meter_image(MeterValues(current_a=1200.0))
    assert (image[2], image[3]) == (12000, 0xFFFF)
    assert decoded(MeterValues(current_a=1200.0))[0]["current_a"] == pytest.approx(1200.0)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (MeterValues(voltage_v=-1.0), "voltage_v -1.0 is not a finite number >= 0"),
        (MeterValues(current_a=float("nan")), "current_a nan is not a finite number"),
        (MeterValues(current_a=1e9), "current_a 1000000000.0 is too large"),
        (MeterValues(power_kw=3e6), "power_kw 3000000.0 does not fit"),
        (MeterValues(energy_export_kwh=-0.5), "energy_export_kwh -0.5 does not fit"),
        (MeterValues(frequency_hz=float("inf")), "frequency_hz inf does not fit"),
        (MeterValues(serial_number="S" * 17), "over 16 chars"),
        (MeterValues(serial_number="Zähler"), "ascii"),
    ],
)
def test_values_the_registers_cannot_hold_are_refused(values: MeterValues, complaint: str) -> None:
    """Out-of-range, non-finite or negative values and unfit serial numbers raise ValueError."""
    with pytest.raises(ValueError, match=complaint):
        meter_image(values)


@settings(max_examples=100, deadline=None)
@given(
    values=st.builds(
        MeterValues,
        power_kw=st.floats(-2_000_000, 2_000_000),
        reactive_power_kvar=st.floats(-2_000_000, 2_000_000),
        voltage_v=st.floats(0, 60_000_000),
        current_a=st.floats(0, 60_000_000),
        frequency_hz=st.floats(0, 655),
        power_factor=st.floats(-1, 1),
        energy_import_kwh=st.floats(0, 1e10),
        energy_export_kwh=st.floats(0, 1e10),
        serial_number=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=16),
    )
)
def test_any_value_in_range_round_trips(values: MeterValues) -> None:
    """Random in-range values come back within their register resolution."""
    assert_round_trip(values)
