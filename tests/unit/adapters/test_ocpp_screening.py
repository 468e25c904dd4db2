"""Screening of charger frames: any text either parses to an OCPP-J message or raises an
``OCPPError`` with a spec code; schema checks drop only unknown optional fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.exceptions import OCPPError

from derim.adapters.ocpp.screening import parse_frame, screen_call, unique_id_of

CODES_16 = {"FormationViolation", "PropertyConstraintViolation"}
CODES_201 = {"RpcFrameworkError", "MessageTypeNotSupported", "FormatViolation"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.text(max_size=60) | json_values.map(json.dumps), st.sampled_from(["1.6", "2.0.1"]))
def test_any_frame_parses_or_raises_a_spec_error(raw: str, version: str) -> None:
    """Garbage never escapes as anything but an OCPPError whose code the version knows."""
    try:
        frame = parse_frame(raw, version)
    except OCPPError as exc:
        refused: OCPPError | None = exc
    else:
        refused = None
        assert frame[0] in (2, 3, 4)
    if refused is not None:
        assert refused.code in (CODES_16 if version == "1.6" else CODES_201)
    assert isinstance(unique_id_of(raw), str)


@settings(max_examples=300)
@given(
    st.sampled_from(["BootNotification", "StatusNotification", "MeterValues", "Heartbeat"]),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    st.sampled_from(["1.6", "2.0.1"]),
)
def test_any_payload_passes_or_raises_a_spec_error(
    action: str, payload: dict[str, Any], version: str
) -> None:
    """Screening a random payload either passes it (without unknown fields) or raises."""
    try:
        screened = screen_call(action, payload, version, strict=False)
    except OCPPError as exc:
        refused: OCPPError | None = exc
    else:
        refused = None
        assert set(screened.dropped).isdisjoint(screened.payload)
    if refused is not None:
        assert refused.code.endswith(("Violation", "Error"))


def test_only_unknown_fields_are_dropped() -> None:
    """An extra top-level field and an extra nested one are dropped and named; the rest stays."""
    payload = {
        "connectorId": 1,
        "meterValue": [
            {"timestamp": "2026-11-26T08:00:00Z", "sampledValue": [{"value": "1", "colour": "r"}]}
        ],
        "vendorNote": "x",
    }
    screened = screen_call("MeterValues", payload, "1.6", strict=False)
    assert sorted(screened.dropped) == ["meterValue/0/sampledValue/0/colour", "vendorNote"]
    assert screened.payload == {
        "connectorId": 1,
        "meterValue": [{"timestamp": "2026-11-26T08:00:00Z", "sampledValue": [{"value": "1"}]}],
    }


@pytest.mark.parametrize(
    ("raw", "expected"), [("[2,", "-1"), ('[2, "abc", "Heartbeat", {}]', "abc"), ("[2, 5]", "-1")]
)
def test_the_unique_id_is_read_when_it_can_be(raw: str, expected: str) -> None:
    """A CallError to an unreadable frame uses -1 as its id, else the frame's own id."""
    assert unique_id_of(raw) == expected
