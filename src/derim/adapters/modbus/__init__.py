"""Modbus adapter: YAML device profiles and a pure codec for register reads and writes."""

from derim.adapters.modbus.codec import (
    MISSING,
    FieldValue,
    Missing,
    ReadRequest,
    RegisterImage,
    apply_scale,
    decode_block,
    decode_point,
    decode_reading,
    encode_write,
    plan_reads,
)
from derim.adapters.modbus.profile import (
    Block,
    ControlPoint,
    Point,
    Profile,
    ReadSettings,
    RegisterSpan,
    load_profile,
    load_profile_text,
    shipped_profile,
)

__all__ = [
    "MISSING",
    "Block",
    "ControlPoint",
    "FieldValue",
    "Missing",
    "Point",
    "Profile",
    "ReadRequest",
    "ReadSettings",
    "RegisterImage",
    "RegisterSpan",
    "apply_scale",
    "decode_block",
    "decode_point",
    "decode_reading",
    "encode_write",
    "load_profile",
    "load_profile_text",
    "plan_reads",
    "shipped_profile",
]
