"""Pure mapping of OpenADR events onto power limits, and the VEN's settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from derim.grid.openadr.config import OpenAdrConfig, Programme, SignalRule
from derim.grid.openadr.signals import (
    SignalError,
    intervals_of,
    limit_of,
    programmes_for,
    signal_for,
    steps_for,
)
from derim.models.common import DeviceType
from derim.models.device import DERDevice

T0 = datetime(2025, 1, 6, 17, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
LEVELS = SignalRule()
DISPATCH = SignalRule(signal_name="LOAD_DISPATCH", signal_type="setpoint", kind="group_kw")


def event(
    payloads: list[Any], *, name: str = "SIMPLE", kind: str = "level", context: str = "oadr://a",
    resources: list[str] | None = None, measurement: dict[str, Any] | None = None,
    own_starts: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """An event as openleadr parses it: one signal, one-minute intervals from T0."""
    intervals = [
        {"uid": i, "duration": MINUTE, "signal_payload": payload}
        | ({"dtstart": T0 + i * MINUTE} if own_starts else {})
        for i, payload in enumerate(payloads)
    ]
    signal: dict[str, Any] = {"signal_name": name, "signal_type": kind, "intervals": intervals}
    if measurement is not None:
        signal["measurement"] = measurement
    return {
        "event_descriptor": {"event_id": "ev-1", "market_context": context},
        "active_period": {"dtstart": T0, "duration": len(payloads) * MINUTE},
        "event_signals": [signal],
        "targets_by_type": {"resource_id": resources} if resources else {"ven_id": ["v"]},
    }


def device(device_id: str, rated_kw: float | None) -> DERDevice:
    return DERDevice(id=device_id, device_type=DeviceType.SOLAR_PV, rated_power_kw=rated_kw)


def steps(rule: SignalRule, raw: dict[str, Any], members: list[DERDevice]) -> list[Any]:
    signal = raw["event_signals"][0]
    return steps_for(rule, intervals_of(raw, signal), signal, members)


def test_simple_levels_become_percent_limits_merged_while_equal() -> None:
    """Levels 2, 2, 0, 3 are 40 % for two minutes (one command lapsing at its end), no limit,
    then 0 %; each command comes from source openadr."""
    pv = device("pv", 5.0)
    result = steps(LEVELS, event([2, 2, 0, 3]), [pv])
    assert [(s.start, s.end) for s in result] == [
        (T0, T0 + 2 * MINUTE),
        (T0 + 2 * MINUTE, T0 + 3 * MINUTE),
        (T0 + 3 * MINUTE, T0 + 4 * MINUTE),
    ]
    first, cleared, last = (s.requests.get("pv") for s in result)
    assert cleared is None
    assert first is not None
    assert last is not None
    assert (first.value, first.unit, first.source, first.expires_at) == (
        40.0, "%", "openadr", T0 + 2 * MINUTE
    )  # fmt: skip
    assert (last.value, last.command.value) == (0.0, "set_power_limit")


@pytest.mark.parametrize(
    ("rule", "payload"),
    [
        (LEVELS, 7), (LEVELS, 1.5), (LEVELS, "high"), (LEVELS, float("nan")), (LEVELS, None),
        (SignalRule(kind="percent"), 120.0), (SignalRule(kind="fraction"), -0.1),
        (DISPATCH, -3.0),
    ],
)  # fmt: skip
def test_malformed_payloads_are_refused(rule: SignalRule, payload: object) -> None:
    """An unknown level, a fractional level, a non-number, NaN, a missing payload or a value
    out of its range raises SignalError."""
    with pytest.raises(SignalError):
        steps(rule, event([payload]), [device("pv", 5.0)])


def test_a_group_kw_setpoint_is_shared_by_rating_in_its_unit() -> None:
    """6000 W (scale none) over 8 kW and 4 kW inverters is 4 kW and 2 kW; a member without a
    rating gets nothing; more than the group's rating caps each at its own."""
    members = [device("big", 8.0), device("small", 4.0), device("unrated", None)]
    watts = {"name": "powerReal", "unit": "W", "scale": "none"}
    (step,) = steps(DISPATCH, event([6000], name="LOAD_DISPATCH", kind="setpoint",
                                    measurement=watts), members)  # fmt: skip
    assert {k: (r.value, r.unit) for k, r in step.requests.items()} == {
        "big": (4.0, "kW"), "small": (2.0, "kW")
    }  # fmt: skip
    (capped,) = steps(DISPATCH, event([50], name="LOAD_DISPATCH", kind="setpoint"), members)
    assert {k: r.value for k, r in capped.requests.items()} == {"big": 8.0, "small": 4.0}


def test_a_signal_in_other_units_than_power_is_refused() -> None:
    """A LOAD_DISPATCH signal in volts cannot be a power limit."""
    volts = {"name": "voltage", "unit": "V", "scale": "none"}
    raw = event([230], name="LOAD_DISPATCH", kind="setpoint", measurement=volts)
    with pytest.raises(SignalError, match="not a power"):
        limit_of(DISPATCH, 230, raw["event_signals"][0])


def test_fractions_and_percentages_read_as_percent_of_rating() -> None:
    """LOAD_CONTROL capacity 0.25 and a percentage of 25 both give 25 %."""
    fraction = SignalRule(signal_name="LOAD_CONTROL", kind="fraction")
    assert limit_of(fraction, 0.25, {}) == 25
    assert limit_of(SignalRule(kind="percent"), 25, {}) == 25


def test_intervals_without_own_start_follow_each_other_and_zero_is_open_ended() -> None:
    """Intervals without dtstart run back to back from the event's start; a zero duration
    lasts until the event is cancelled (no end)."""
    raw = event([1, 2], own_starts=False)
    raw["event_signals"][0]["intervals"][1]["duration"] = timedelta(0)
    first, second = intervals_of(raw, raw["event_signals"][0])
    assert (first.start, first.end) == (T0, T0 + MINUTE)
    assert (second.start, second.end, second.payload) == (T0 + MINUTE, None, 2.0)


def test_programmes_are_chosen_by_market_context_and_resource() -> None:
    """A programme takes events of its market context (or any, without one); an event that
    targets resources reaches only the programmes of those resources."""
    site = Programme(group="site", market_context="oadr://a")
    fleet = Programme(group="fleet", resource_id="r-fleet")
    other = Programme(group="other", market_context="oadr://b")
    programmes = [site, fleet, other]
    assert programmes_for(programmes, event([1])) == [site, fleet]
    assert programmes_for(programmes, event([1], resources=["r-fleet"])) == [fleet]
    assert programmes_for(programmes, event([1], context="oadr://c")) == [fleet]


def test_the_first_signal_a_rule_reads_is_used() -> None:
    """A programme reading only LOAD_DISPATCH setpoints skips a SIMPLE signal; with no such
    signal it reads nothing."""
    programme = Programme(group="g", signals=[DISPATCH])
    raw = event([1])
    assert signal_for(programme, raw) is None
    dispatch = event([5], name="LOAD_DISPATCH", kind="setpoint")["event_signals"][0]
    raw["event_signals"].append(dispatch)
    assert signal_for(programme, raw) == (DISPATCH, dispatch)


@pytest.mark.parametrize(
    "changes",
    [
        {"cert_path": "/tmp/c.pem"},
        {"cert_path": "/tmp/c.pem", "key_path": "/tmp/k.pem"},
        {"ca_path": "/tmp/ca.pem"},
        {"programmes": [{"group": "g"}, {"group": "h", "resource_id": "g"}]},
        {"programmes": [{"group": "g", "signals": [{"levels": {1: 150}}]}]},
        {"programmes": []},
        {"vtn_url": "ftp://vtn"},
        {"retry_initial_s": 10, "retry_max_s": 5},
    ],
)
def test_inconsistent_settings_are_refused(changes: dict[str, Any]) -> None:
    """A certificate without its key or without a CA, a CA without a client certificate
    (openleadr would ignore it), two programmes with one resource id, a level above 100 %, no
    programme, a non-HTTP URL or a backoff cap below its start."""
    settings = {"vtn_url": "http://vtn/OpenADR2/Simple/2.0b", "ven_name": "v",
                "programmes": [{"group": "g"}]} | changes  # fmt: skip
    with pytest.raises(ValidationError):
        OpenAdrConfig.model_validate(settings)


@pytest.mark.parametrize(
    ("changes", "weak"),
    [
        ({}, ["plain http", "no vtn_fingerprint"]),
        ({"vtn_url": "https://vtn/OpenADR2/Simple/2.0b"}, ["no vtn_fingerprint"]),
        ({"vtn_url": "https://vtn/b", "vtn_fingerprint": "AB:CD"}, []),
        ({"vtn_url": "https://vtn/b", "vtn_fingerprint": "AB:CD", "check_hostname": False}, []),
        (
            {"vtn_url": "https://vtn/b", "vtn_fingerprint": "AB:CD", "check_hostname": False,
             "cert_path": "/c.pem", "key_path": "/k.pem", "ca_path": "/ca.pem"},
            ["check_hostname is false"],
        ),
    ],
)  # fmt: skip
def test_weak_security_settings_are_named(changes: dict[str, Any], weak: list[str]) -> None:
    """Plain http, no VTN fingerprint and (with the client certificate that makes openleadr
    use it) check_hostname false are each named once; a fully checked VTN gives none."""
    settings = {"vtn_url": "http://vtn/OpenADR2/Simple/2.0b", "ven_name": "v",
                "programmes": [{"group": "g"}]} | changes  # fmt: skip
    found = OpenAdrConfig.model_validate(settings).weaknesses()
    assert [line.split(":")[0] for line in found] == weak
