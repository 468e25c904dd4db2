"""IEEE 2030.5 bodies from the peer: hardened parsing, a size cap that holds while reading,
wire-to-DERIM unit conversion, and refusal of what the spec does not define; the poll backoff."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
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
from derim.grid.fleet import FleetAccess
from derim.grid.sep2.client import MAX_BACKOFF_S, Sep2Link
from derim.grid.sep2.config import EndDeviceMapping, Sep2Config
from derim.grid.sep2.controls import event_of, modes_of
from derim.grid.sep2.resources import Sep2Http, parse, render
from derim.models.command import CommandRequest, CommandResult

CHUNK = b"<" * 1024


async def _no_command(device_id: str, request: CommandRequest) -> CommandResult:
    raise AssertionError("no command expected")


async def _no_readings(device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
    return {}


NO_FLEET = FleetAccess(_no_command, lambda: [], _no_readings)


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


def config(tmp_path: Path, **changes: object) -> Sep2Config:
    """Settings with a throw-away self-signed certificate (as CA and client identity)."""
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=client"],
        check=True, capture_output=True,
    )  # fmt: skip
    fields: dict[str, object] = {
        "server_url": "https://127.0.0.1:9",
        "client_cert": cert,
        "client_key": key,
        "ca_cert": cert,
        "end_devices": [EndDeviceMapping(device_ids=["pv"])],
    }
    return Sep2Config.model_validate(fields | changes)


async def test_a_body_over_the_cap_is_not_read_to_its_end(tmp_path: Path) -> None:
    """A streamed body (no Content-Length) is read only until it passes ``max_body_bytes``:
    ProtocolError, and the rest of the stream is never pulled into memory."""
    pulled = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield CHUNK

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless_body())

    http = Sep2Http(config(tmp_path, max_body_bytes=8 * 1024), httpx.MockTransport(handler))
    try:
        with pytest.raises(ProtocolError, match="over 8192 bytes"):
            await http.get("/dcap", DERControlBase)
    finally:
        await http.aclose()
    assert pulled <= 9


async def test_a_declared_oversized_body_is_refused_unread(tmp_path: Path) -> None:
    """A Content-Length over the cap is refused before any of the body is read."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        yield CHUNK * 16

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"Content-Length": str(16 * 1024)})

    http = Sep2Http(config(tmp_path, max_body_bytes=8 * 1024), httpx.MockTransport(handler))
    try:
        with pytest.raises(ProtocolError, match="16384 bytes, over 8192"):
            await http.get("/dcap", DERControlBase)
    finally:
        await http.aclose()
    assert pulled == 0


async def test_failed_polls_back_off_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    """After failures the next poll waits poll_interval_s doubled per failure, spread by up to
    10 % so that many clients do not retry in step, and never much over the cap."""
    link = Sep2Link(config(tmp_path, poll_interval_s=2.0), fleet=NO_FLEET)
    try:
        waits = {link._wait(3) for _ in range(20)}
        assert all(8.0 <= wait <= 8.8 for wait in waits)
        assert len(waits) > 1
        assert MAX_BACKOFF_S <= link._wait(40) <= MAX_BACKOFF_S * 1.1
    finally:
        await link.aclose()
