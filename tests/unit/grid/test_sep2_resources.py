"""IEEE 2030.5 bodies from the peer: hardened parsing, wire-to-DERIM unit conversion, and
refusal of what the spec does not define."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy_schema.server.schema.sep2.der import (
    ActivePower,
    DERControlBase,
    DERControlResponse,
    PowerFactorWithExcitation,
)
from envoy_schema.server.schema.sep2.event import EventStatus
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType

from derim.errors import ProtocolError
from derim.grid.sep2.controls import event_of, modes_of
from derim.grid.sep2.resources import parse, render


def control(status: int) -> DERControlResponse:
    return DERControlResponse(
        mRID="ab" * 16,
        creationTime=10,
        EventStatus_=EventStatus(currentStatus=status, dateTime=10, potentiallySuperseded=False),
        interval=DateTimeIntervalType(start=20, duration=30),
        DERControlBase_=DERControlBase(opModConnect=False),
        randomizeStart=5,
    )


def test_round_trip_keeps_the_control() -> None:
    """A rendered DERControl parses back to the same event."""
    parsed = parse(DERControlResponse, render(control(1)))
    event = event_of(parsed, primacy=3)
    assert (event.mrid, event.start, event.duration, event.randomize_start) == (
        "AB" * 16,
        20,
        30,
        5,
    )
    assert event.modes == {"opModConnect": False}


@pytest.mark.parametrize(
    "body", [b"", b"<not-closed", b"<DERControl xmlns='urn:ieee:std:2030.5:ns'/>"]
)
def test_bodies_that_are_not_the_resource_raise_protocol_error(body: bytes) -> None:
    """Empty, broken or incomplete bodies are refused with ProtocolError."""
    with pytest.raises(ProtocolError):
        parse(DERControlResponse, body)


def test_external_entities_are_not_expanded(tmp_path: Path) -> None:
    """A body pulling a local file into a field (XXE) is refused for its DTD: the file, whose
    content would have been a valid value, is never read in."""
    secret = tmp_path / "limit.txt"
    secret.write_text("5000")
    body = (
        f'<!DOCTYPE DERControlBase [<!ENTITY e SYSTEM "{secret.as_uri()}">]>'
        '<DERControlBase xmlns="urn:ieee:std:2030.5:ns"><opModMaxLimW>&e;</opModMaxLimW>'
        "</DERControlBase>"
    ).encode()
    with pytest.raises(ProtocolError, match="DTD"):
        parse(DERControlBase, body)


def test_an_undefined_event_status_is_refused() -> None:
    """EventStatus 9 is reserved: the control is refused rather than guessed at."""
    with pytest.raises(ProtocolError, match="unknown status 9"):
        event_of(control(9), primacy=0)


def test_wire_values_become_derim_units() -> None:
    """Hundredths of a percent become percent, value x 10^multiplier becomes W, and an
    absorbing (under-excited) power factor becomes negative."""
    base = DERControlBase(
        opModMaxLimW=4550,
        opModTargetW=ActivePower(value=-15, multiplier=2),
        opModFixedPFInjectW=PowerFactorWithExcitation(
            displacement=95, excitation=True, multiplier=-2
        ),
    )
    assert modes_of(base) == {
        "opModMaxLimW": 45.5,
        "opModTargetW": -1500.0,
        "opModFixedPFInjectW": -0.95,
    }
