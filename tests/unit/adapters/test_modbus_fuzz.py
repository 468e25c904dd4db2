"""Hypothesis fuzzing of the Modbus codec: any register image decodes or raises ProtocolError."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.modbus import (
    ControlPoint,
    Missing,
    Point,
    ReadRequest,
    decode_point,
    decode_reading,
    encode_write,
    plan_reads,
    shipped_profile,
)
from derim.errors import ProtocolError

FUZZ = settings(max_examples=150, deadline=None)
SENTINELS = [0x8000, 0xFFFF, 0x7FC0]
registers_values = st.one_of(
    st.integers(0, 0xFFFF), st.sampled_from(SENTINELS), st.integers(-70000, 140000)
)
small_registers = st.one_of(st.integers(0, 7), st.integers(0xFFF8, 0xFFFF), st.integers(0, 0xFFFF))
"""Register values that are mostly plausible: small codes and exponents of either sign."""
layouts = {
    "word_order": st.sampled_from(["big", "little"]),
    "byte_order": st.sampled_from(["big", "little"]),
}


@st.composite
def points(draw: st.DrawFn) -> Point:
    """A random valid readable point."""
    data_type = draw(st.sampled_from(["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"]))
    spec: dict[str, Any] = {
        "name": f"p{draw(st.integers(0, 10**6))}",
        "address": draw(st.integers(0, 200)),
        "register_type": draw(st.sampled_from(["holding", "input"])),
        "unit_id": draw(st.sampled_from([None, 1, 2])),
        **{key: draw(strategy) for key, strategy in layouts.items()},
    }
    if draw(st.booleans()):
        return Point(**spec, data_type="string", length=draw(st.integers(1, 8)))
    width = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2}.get(data_type, 4)
    sentinels = draw(st.lists(st.sampled_from([0x8000, 0x7FC00000, 2 ** (16 * width) - 1])))
    sentinels = [s for s in sentinels if s < 2 ** (16 * width)]
    return Point(**spec, data_type=data_type, not_implemented=sentinels)


@pytest.mark.parametrize("name", ["generic_meter", "generic_battery"])
@FUZZ
@given(data=st.data())
def test_any_image_of_a_shipped_profile_decodes_or_raises_protocol_error(
    name: str, data: st.DataObject
) -> None:
    """Random registers, lengths and missing requests give fields or ProtocolError, nothing else."""
    profile = shipped_profile(name)
    image: dict[ReadRequest, list[int]] = {}
    well_formed = data.draw(st.booleans())
    values = small_registers if well_formed else registers_values
    for request in plan_reads(profile.points, profile.read.max_registers, profile.read.max_gap):
        if not well_formed and data.draw(st.integers(0, 4)) == 0:
            continue
        size = request.count if well_formed else data.draw(st.integers(0, request.count + 3))
        image[request] = data.draw(st.lists(values, min_size=size, max_size=size))
    try:
        reading = decode_reading(profile, image)
    except ProtocolError:
        return
    assert set(reading.fields) == {point.field for point in profile.points} - {None}
    for value in reading.fields.values():
        assert value is None or isinstance(value, str) or math.isfinite(value)
    enums = {point.name: point.enum for point in profile.points if point.enum is not None}
    assert all(code not in enums[name] for name, code in reading.unmapped.items())


@FUZZ
@given(point=points(), registers=st.lists(registers_values, max_size=10))
def test_any_registers_decode_or_raise_protocol_error(point: Point, registers: list[int]) -> None:
    """Any register list for any point decodes to its Python type or raises ProtocolError."""
    try:
        value = decode_point(registers, point)
    except ProtocolError:
        assert (
            len(registers) != point.count
            or not all(0 <= r <= 0xFFFF for r in registers)
            or (point.data_type in ("f32", "f64", "string"))
        )
        return
    assert len(registers) == point.count
    expected = str if point.data_type == "string" else (int, float, Missing)
    assert isinstance(value, expected)


@FUZZ
@given(
    spans=st.lists(points(), min_size=1, max_size=12),
    max_registers=st.integers(8, 125),
    max_gap=st.integers(0, 20),
)
def test_plans_cover_every_point_within_the_size_limit(
    spans: list[Point], max_registers: int, max_gap: int
) -> None:
    """Every point lies wholly inside one request of its type and unit; no request is too big."""
    plan = plan_reads(spans, max_registers, max_gap)
    assert all(1 <= request.count <= max_registers for request in plan)
    for span in spans:
        assert any(
            (r.register_type, r.unit_id) == (span.register_type, span.unit_id)
            and r.address <= span.address
            and span.address + span.count <= r.end
            for r in plan
        )


@FUZZ
@given(
    data_type=st.sampled_from(["u16", "s16", "u32", "s32", "s64"]),
    layout=st.fixed_dictionaries(layouts),
    scale=st.sampled_from([1.0, 0.1, 0.01, -0.001]),
    data=st.data(),
)
def test_encoded_setpoints_read_back_as_written(
    data_type: str, layout: dict[str, str], scale: float, data: st.DataObject
) -> None:
    """A value within limits encodes to in-range registers that decode back to it (to one step)."""
    low, high = (-3.0, 3.0)
    if data_type.startswith("u"):
        low, high = (0.0, 6.0) if scale > 0 else (-6.0, 0.0)
    control = ControlPoint(
        name="c", address=0, data_type=data_type, scale=scale, min=low, max=high, **layout
    )
    value = data.draw(st.floats(low, high))
    registers = encode_write(control, value)
    assert len(registers) == control.count
    assert all(0 <= r <= 0xFFFF for r in registers)
    raw = decode_point(registers, control)
    assert isinstance(raw, int)
    assert raw * scale == pytest.approx(value, abs=abs(scale) / 2 + 1e-9)
