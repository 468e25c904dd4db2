"""IEEE 2030.5 event rules: activity windows, randomisation, superseding, cancellation, defaults,
plus the identities derived from a certificate and the control-to-command mapping."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from derim.grid.sep2.config import lfdi_of_certificate, sfdi_of
from derim.grid.sep2.controls import Channel, commands_for
from derim.grid.sep2.events import (
    ControlEvent,
    DefaultControl,
    EventStatus,
    Phase,
    effective_window,
    randomized_offset,
    resolve,
)
from derim.models.command import CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, SimulatedConnection

T0 = 1_700_000_000


def event(mrid: str, **changes: object) -> ControlEvent:
    """A 10-minute opModMaxLimW 50 % event of a primacy-1 program, created at T0."""
    base = ControlEvent(
        mrid=mrid,
        primacy=1,
        creation_time=T0,
        start=T0 + 60,
        duration=600,
        modes={"opModMaxLimW": 50.0},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_an_event_is_scheduled_then_active_then_completed() -> None:
    """Active from start (inclusive) to start + duration (exclusive), with the event's end."""
    one = event("A")
    assert resolve([one], [], T0).phases["A"] is Phase.SCHEDULED
    at_start = resolve([one], [], T0 + 60)
    assert at_start.phases["A"] is Phase.ACTIVE
    assert at_start.modes["opModMaxLimW"].value == 50.0
    assert at_start.modes["opModMaxLimW"].ends_at == T0 + 660
    ended = resolve([one], [], T0 + 660)
    assert ended.phases["A"] is Phase.COMPLETED
    assert ended.modes == {}


def test_next_change_is_the_next_start_or_end() -> None:
    """The resolution says when to look again: the scheduled start, then the active end."""
    assert resolve([event("A")], [], T0).next_change == T0 + 60
    assert resolve([event("A")], [], T0 + 100).next_change == T0 + 660
    assert resolve([event("A")], [], T0 + 700).next_change is None


@given(
    bound=st.integers(min_value=-3600, max_value=3600),
    seed=st.text(max_size=20),
)
def test_randomisation_stays_within_its_bound_and_sign(bound: int, seed: str) -> None:
    """A draw lies between 0 and the bound, on the bound's side, and repeats for one seed."""
    draw = randomized_offset(bound, seed)
    assert min(0, bound) <= draw <= max(0, bound)
    assert draw == randomized_offset(bound, seed)


def test_randomised_window_shifts_start_and_stretches_end_within_bounds() -> None:
    """Start moves by [0, randomizeStart], the end by that plus [0, randomizeDuration];
    different clients (seeds) spread out."""
    randomized = event("R", randomize_start=300, randomize_duration=120)
    starts = set()
    for seed in map(str, range(40)):
        start, end = effective_window(randomized, seed)
        assert T0 + 60 <= start <= T0 + 360
        assert start + 600 <= end <= start + 720
        starts.add(start)
    assert len(starts) > 10


def test_negative_randomize_start_moves_the_start_earlier() -> None:
    """A negative randomizeStart draws from [randomizeStart, 0]."""
    start, _ = effective_window(event("N", randomize_start=-30), "client")
    assert T0 + 30 <= start <= T0 + 60


def test_newer_event_of_the_same_primacy_supersedes_the_older() -> None:
    """Overlapping events in one primacy: the later creationTime wins; the older one,
    left with no mode of its own, is superseded."""
    old = event("OLD")
    new = event("NEW", creation_time=T0 + 5, modes={"opModMaxLimW": 20.0})
    resolution = resolve([old, new], [], T0 + 100)
    assert resolution.modes["opModMaxLimW"].mrid == "NEW"
    assert resolution.modes["opModMaxLimW"].value == 20.0
    assert resolution.phases == {"OLD": Phase.SUPERSEDED, "NEW": Phase.ACTIVE}


def test_lower_primacy_value_wins_over_a_newer_event() -> None:
    """Across programs the lowest primacy number takes precedence, whatever the creation time."""
    utility = event("UTIL", primacy=0, modes={"opModMaxLimW": 70.0})
    market = event("MKT", primacy=2, creation_time=T0 + 30, modes={"opModMaxLimW": 10.0})
    resolution = resolve([market, utility], [], T0 + 100)
    assert resolution.modes["opModMaxLimW"].mrid == "UTIL"
    assert resolution.phases["MKT"] is Phase.SUPERSEDED


def test_modes_are_resolved_each_on_its_own() -> None:
    """An event that loses one mode still applies the others it carries."""
    limit_and_pf = event("BOTH", modes={"opModMaxLimW": 60.0, "opModFixedPFInjectW": -0.9})
    tighter = event("LIM", creation_time=T0 + 10, modes={"opModMaxLimW": 30.0})
    resolution = resolve([limit_and_pf, tighter], [], T0 + 100)
    assert resolution.modes["opModMaxLimW"].mrid == "LIM"
    assert resolution.modes["opModFixedPFInjectW"].mrid == "BOTH"
    assert resolution.phases["BOTH"] is Phase.ACTIVE


@pytest.mark.parametrize(
    ("status", "phase"),
    [(EventStatus.CANCELLED, Phase.CANCELLED), (EventStatus.SUPERSEDED, Phase.SUPERSEDED)],
)
def test_cancelled_or_superseded_events_stop_at_once(status: EventStatus, phase: Phase) -> None:
    """A cancelled or server-superseded event is never in force, even inside its window."""
    stopped = event("X", status=status, status_time=T0 + 90)
    resolution = resolve([stopped], [], T0 + 100)
    assert resolution.phases["X"] is phase
    assert resolution.modes == {}


def test_cancellation_with_randomisation_ends_within_the_larger_bound() -> None:
    """CancelledWithRandomization keeps the event until status time + a draw in
    [0, max(|randomizeStart|, |randomizeDuration|)], then stops it."""
    cancelled = event(
        "CR",
        randomize_start=-20,
        randomize_duration=200,
        status=EventStatus.CANCELLED_WITH_RANDOMIZATION,
        status_time=T0 + 120,
    )
    assert resolve([cancelled], [], T0 + 320).phases["CR"] is Phase.CANCELLED
    assert resolve([cancelled], [], T0 + 100).phases["CR"] is Phase.ACTIVE
    ends = {resolve([cancelled], [], T0 + 100, seed=str(s)).modes["opModMaxLimW"].ends_at
            for s in range(30)}  # fmt: skip
    assert all(end is not None and T0 + 120 <= end <= T0 + 320 for end in ends)


def test_default_control_fills_modes_no_event_sets() -> None:
    """Without an active event the DefaultDERControl of the lowest primacy applies, with no end;
    an active event overrides it for the modes it carries."""
    defaults = [
        DefaultControl("D2", primacy=2, modes={"opModMaxLimW": 90.0, "opModConnect": True}),
        DefaultControl("D1", primacy=1, modes={"opModMaxLimW": 80.0}),
    ]
    idle = resolve([event("A")], defaults, T0)
    assert idle.modes["opModMaxLimW"].value == 80.0
    assert idle.modes["opModMaxLimW"].ends_at is None
    assert idle.modes["opModConnect"].mrid == "D2"
    busy = resolve([event("A")], defaults, T0 + 100)
    assert busy.modes["opModMaxLimW"].mrid == "A"
    assert busy.modes["opModConnect"].mrid == "D2"


def test_lfdi_and_sfdi_follow_the_spec_example() -> None:
    """IEEE 2030.5 §6.3.4's example: LFDI 3E4F45AB31EDFE5B67E343E5E4562E31984E23E5 has SFDI
    167261211391; the LFDI is the leading 160 bits of the certificate's SHA-256."""
    assert sfdi_of("3E4F45AB31EDFE5B67E343E5E4562E31984E23E5") == 167261211391
    digest = hashlib.sha256(b"certificate").hexdigest()
    assert lfdi_of_certificate(b"certificate") == digest[:40].upper()


def pv(device_id: str, rating: float | None) -> DERDevice:
    return DERDevice(
        id=device_id,
        device_type=DeviceType.SOLAR_PV,
        rated_power_kw=rating,
        connection=SimulatedConnection(protocol="simulated"),
    )


def test_percent_limits_use_each_rating_and_watts_are_shared_by_rating() -> None:
    """opModMaxLimW 25 % is 25 % of each device's rating (or 25 % when unrated); a 3 kW target
    splits 2:1 between 8 kW and 4 kW inverters; connect and power factor pass through."""
    devices = [pv("big", 8.0), pv("small", 4.0)]
    modes = {"opModMaxLimW": 25.0, "opModTargetW": 3000.0, "opModConnect": False}
    plan = commands_for(modes | {"opModFixedPFInjectW": -0.95}, devices)
    assert plan["big"][Channel.LIMIT].value == 2.0
    assert plan["small"][Channel.LIMIT].value == 1.0
    assert plan["big"][Channel.ACTIVE_POWER].value == 2.0
    assert plan["small"][Channel.ACTIVE_POWER].value == 1.0
    assert plan["big"][Channel.CONNECTION].command is CommandType.DISCONNECT
    assert plan["small"][Channel.POWER_FACTOR].value == -0.95
    unrated = commands_for({"opModMaxLimW": 25.0}, [pv("x", None)])["x"][Channel.LIMIT]
    assert (unrated.value, unrated.unit) == (25.0, "%")


def test_a_superseded_event_stays_superseded_when_the_newer_one_ends() -> None:
    """Supersession within one primacy is final: once the newer event is over, the older one
    (still inside its window) does not come back; the resolution carries the memory."""
    old = event("OLD", duration=1200)
    new = event("NEW", creation_time=T0 + 5, start=T0 + 100, duration=60)
    during = resolve([old, new], [], T0 + 120)
    assert during.phases["OLD"] is Phase.SUPERSEDED
    assert during.superseded == {"OLD"}
    after = resolve([old, new], [], T0 + 200, superseded=during.superseded)
    assert after.phases == {"OLD": Phase.SUPERSEDED, "NEW": Phase.COMPLETED}
    assert after.modes == {}
    assert after.superseded == {"OLD"}


def test_an_event_overridden_by_another_primacy_resumes() -> None:
    """Across primacies the rule holds per instant: an event overridden by a lower-primacy
    program's event is in force again once that event ends, and is not remembered."""
    market = event("MKT", primacy=2, duration=1200)
    utility = event("UTIL", primacy=0, start=T0 + 100, duration=60, modes={"opModMaxLimW": 10.0})
    during = resolve([market, utility], [], T0 + 120)
    assert during.phases["MKT"] is Phase.SUPERSEDED
    assert during.superseded == frozenset()
    after = resolve([market, utility], [], T0 + 200, superseded=during.superseded)
    assert after.phases["MKT"] is Phase.ACTIVE
    assert after.modes["opModMaxLimW"].mrid == "MKT"


def test_a_cancelled_event_is_not_remembered_as_superseded() -> None:
    """The memory holds only events still listed: a superseded event the server drops (or
    cancels) leaves it."""
    old = event("OLD", duration=1200)
    cancelled = replace(old, status=EventStatus.CANCELLED, status_time=T0 + 150)
    resolution = resolve([cancelled], [], T0 + 200, superseded=frozenset({"OLD", "GONE"}))
    assert resolution.phases["OLD"] is Phase.CANCELLED
    assert resolution.superseded == frozenset()
