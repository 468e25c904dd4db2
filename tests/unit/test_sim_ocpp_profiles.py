"""Charging-profile logic of the simulated OCPP chargers: parsing, checks, stacking, purposes,
replacement, clearing, A/W conversion and period selection."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derim.sim.ocpp_profiles import (
    Period,
    Profile,
    ProfileError,
    Purpose,
    check,
    clear,
    composite_limit_kw,
    composite_schedule,
    from_kw,
    install,
    limit_at,
    parse_v16,
    parse_v201,
    to_kw,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PHASES, VOLTS = 3, 230.0


def make(
    purpose: Purpose = Purpose.TX,
    *,
    limit: float = 7000.0,
    unit: str = "W",
    stack: int = 0,
    connector: int = 1,
    profile_id: int = 1,
    **fields: Any,
) -> Profile:
    """A one-period Relative profile unless ``fields`` say otherwise."""
    base = Profile(
        id=profile_id,
        connector_id=connector,
        purpose=purpose,
        stack_level=stack,
        kind="Relative",
        unit=unit,
        periods=(Period(0, limit),),
    )
    return replace(base, **fields)


def limit_now(profiles: list[Profile], connector: int = 1, *, tx: bool = True) -> float | None:
    """Composite limit (kW) at T0 with a transaction started at T0 (or none)."""
    return composite_limit_kw(
        profiles, connector, T0, tx_start=T0 if tx else None, phases=PHASES, voltage_v=VOLTS
    )


# ---- conversion and parsing -----------------------------------------------------------------


def test_current_limits_convert_with_phases_and_voltage() -> None:
    """A (per phase) becomes kW as A x phases x V / 1000, W as W / 1000, and back."""
    assert to_kw(16, "A", 3, 230) == pytest.approx(11.04)
    assert to_kw(16, "A", 1, 230) == pytest.approx(3.68)
    assert to_kw(7400, "W", 3, 230) == pytest.approx(7.4)
    assert from_kw(11.04, "A", 3, 230) == pytest.approx(16)
    assert from_kw(7.4, "W", 1, 230) == pytest.approx(7400)


def test_parse_v16_reads_decimals_and_dates() -> None:
    """A 1.6 csChargingProfiles (as the library hands it over, limits as Decimal) parses into a
    Profile on its connector, with its transaction id as a string."""
    raw = {
        "charging_profile_id": 5,
        "transaction_id": 101,
        "stack_level": 2,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Absolute",
        "valid_to": "2025-03-02T00:00:00",  # no zone: UTC
        "charging_schedule": {
            "duration": 3600,
            "start_schedule": "2025-03-01T12:00:00Z",
            "charging_rate_unit": "A",
            "charging_schedule_period": [
                {"start_period": 0, "limit": Decimal("16.0")},
                {"start_period": 1800, "limit": Decimal("8.5"), "number_phases": 3},
            ],
        },
    }
    profile = parse_v16(1, raw, received=T0 + timedelta(hours=1))
    assert profile == Profile(
        id=5,
        connector_id=1,
        purpose=Purpose.TX,
        stack_level=2,
        kind="Absolute",
        unit="A",
        periods=(Period(0, 16.0), Period(1800, 8.5)),
        start=T0,
        duration_s=3600,
        valid_to=datetime(2025, 3, 2, tzinfo=UTC),
        transaction_id="101",
    )


def test_parse_v201_takes_the_first_schedule_and_names_purposes_alike() -> None:
    """A 2.0.1 chargingProfile parses its first schedule; ChargingStationMaxProfile is the same
    purpose as 1.6's ChargePointMaxProfile; an Absolute one without start starts on receipt."""
    raw = {
        "id": 3,
        "stack_level": 0,
        "charging_profile_purpose": "ChargingStationMaxProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": [
            {
                "id": 1,
                "charging_rate_unit": "W",
                "charging_schedule_period": [{"start_period": 0, "limit": 22000}],
            },
            {
                "id": 2,
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": 6}],
            },
        ],
    }
    profile = parse_v201(0, raw, received=T0)
    assert (profile.id, profile.purpose, profile.unit, profile.start) == (
        3,
        Purpose.STATION_MAX,
        "W",
        T0,
    )
    assert profile.periods == (Period(0, 22000.0),)
    v16_raw = {
        "charging_profile_id": 3,
        "stack_level": 0,
        "charging_profile_purpose": "ChargePointMaxProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": raw["charging_schedule"][0],
    }
    assert parse_v16(0, v16_raw, received=T0) == profile


@pytest.mark.parametrize(
    "change",
    [
        {"charging_profile_purpose": "CheapestProfile"},
        {"charging_profile_kind": "Recurring"},  # without recurrencyKind
        {"charging_schedule": {"charging_rate_unit": "kW", "charging_schedule_period": []}},
        {"stack_level": None},
        {"valid_from": "yesterday"},
    ],
)
def test_unusable_profiles_raise_profile_error(change: dict[str, Any]) -> None:
    """Unknown purposes, kinds or units, missing fields and bad dates raise ProfileError."""
    raw: dict[str, Any] = {
        "charging_profile_id": 1,
        "stack_level": 0,
        "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": 1}],
        },
    } | change
    with pytest.raises(ProfileError):
        parse_v16(1, raw, received=T0)


def test_profiles_without_a_schedule_raise_profile_error() -> None:
    """A profile without its schedule (or with an empty 2.0.1 schedule list) is refused."""
    with pytest.raises(ProfileError):
        parse_v16(1, {"stack_level": 0}, received=T0)
    with pytest.raises(ProfileError):
        parse_v201(1, {"id": 1, "charging_schedule": []}, received=T0)


# ---- checks, installing, clearing -----------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "tx", "reason"),
    [
        (make(Purpose.STATION_MAX, connector=0), None, None),
        (make(Purpose.STATION_MAX, connector=1), None, "only applies to connector 0"),
        (make(Purpose.EXTERNAL, connector=2), None, "only applies to connector 0"),
        (make(Purpose.TX_DEFAULT, connector=0), None, None),
        (make(Purpose.TX), "7", None),
        (make(Purpose.TX), None, "no transaction"),
        (make(Purpose.TX, transaction_id="8"), "7", "transaction 8 is not running"),
        (make(Purpose.TX, transaction_id="7"), "7", None),
        (make(Purpose.TX_DEFAULT, connector=3), None, "unknown connector 3"),
        (make(periods=(Period(10, 1.0),)), "7", "must start at 0"),
        (make(periods=(Period(0, 1.0), Period(0, 2.0))), "7", "must start at 0 and increase"),
        (make(limit=-1), "7", "negative limit"),
    ],
)
def test_check_applies_the_purpose_rules(
    profile: Profile, tx: str | None, reason: str | None
) -> None:
    """Station-wide purposes only on connector 0, TxProfiles only on a running transaction (and
    the right one), known connectors, periods from 0 upwards, no negative limits."""
    found = check(profile, connectors=2, transaction_id=tx)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason in found


def test_install_replaces_by_id_or_by_purpose_stack_and_connector() -> None:
    """A new profile replaces the one with its id, or with its purpose, stack level and
    connector; others stay."""
    a = make(Purpose.TX_DEFAULT, profile_id=1, stack=0)
    b = make(Purpose.TX_DEFAULT, profile_id=2, stack=1)
    c = make(Purpose.TX_DEFAULT, profile_id=3, stack=1, connector=0)
    profiles = install(install(install([], a), b), c)
    assert profiles == [a, b, c]
    same_id = make(Purpose.STATION_MAX, profile_id=1, connector=0, stack=5)
    assert install(profiles, same_id) == [b, c, same_id]
    same_slot = make(Purpose.TX_DEFAULT, profile_id=9, stack=1)
    assert install(profiles, same_slot) == [a, c, same_slot]


def test_clear_by_id_or_by_criteria() -> None:
    """Clearing by id ignores the criteria; criteria must all match; none clears all."""
    a = make(Purpose.TX_DEFAULT, profile_id=1, stack=0)
    b = make(Purpose.TX_DEFAULT, profile_id=2, stack=1, connector=0)
    c = make(Purpose.STATION_MAX, profile_id=3, stack=1, connector=0)
    profiles = [a, b, c]
    assert clear(profiles, profile_id=2, purpose=Purpose.STATION_MAX) == ([a, c], [b])
    assert clear(profiles, profile_id=99) == (profiles, [])
    assert clear(profiles, purpose=Purpose.TX_DEFAULT) == ([c], [a, b])
    assert clear(profiles, connector_id=0, stack_level=1) == ([a], [b, c])
    assert clear(profiles, connector_id=0, purpose=Purpose.TX) == (profiles, [])
    assert clear(profiles) == ([], profiles)


# ---- period selection -----------------------------------------------------------------------


def test_absolute_periods_follow_elapsed_time_until_the_duration() -> None:
    """An Absolute schedule: nothing before its start, each period from its start_period, and
    nothing past its duration."""
    p = make(
        kind="Absolute",
        start=T0,
        duration_s=3600,
        periods=(Period(0, 11000), Period(600, 7000), Period(1800, 3000)),
    )
    at = [T0 + timedelta(seconds=s) for s in (-1, 0, 599, 600, 1799, 1800, 3599, 3600)]
    assert [limit_at(p, t, T0) for t in at] == [None, 11000, 11000, 7000, 7000, 3000, 3000, None]


def test_relative_periods_start_at_the_transaction() -> None:
    """A Relative schedule counts from the given start (the transaction's)."""
    p = make(periods=(Period(0, 11000), Period(60, 4000)))
    tx_start = T0 - timedelta(seconds=90)
    assert limit_at(p, T0, tx_start) == 4000
    assert limit_at(p, T0, T0) == 11000


def test_recurring_daily_profile_repeats_and_validity_bounds_it() -> None:
    """A Daily Recurring schedule repeats each day from its start; validFrom/validTo bound it."""
    p = make(
        kind="Recurring",
        recurrency="Daily",
        start=T0.replace(hour=0),
        periods=(Period(0, 3000), Period(18 * 3600, 1000)),
        valid_to=T0 + timedelta(days=3),
    )
    assert limit_at(p, T0 + timedelta(days=1), T0) == 3000  # 12:00
    assert limit_at(p, T0 + timedelta(days=2, hours=7), T0) == 1000  # 19:00
    assert limit_at(p, T0 - timedelta(days=1), T0) == 3000  # before its start too
    assert limit_at(p, T0 + timedelta(days=3), T0) is None
    assert limit_at(replace(p, valid_from=T0 + timedelta(hours=1)), T0, T0) is None


# ---- stacking and purposes ------------------------------------------------------------------


def test_highest_stack_level_in_effect_prevails_within_a_purpose() -> None:
    """Within a purpose the highest stack level wins even if it allows more; once it expires the
    lower one applies again."""
    low = make(Purpose.TX_DEFAULT, limit=4000, stack=0, profile_id=1)
    high = make(Purpose.TX_DEFAULT, limit=9000, stack=3, profile_id=2, duration_s=60)
    assert limit_now([low, high]) == pytest.approx(9.0)
    later = composite_limit_kw(
        [low, high], 1, T0 + timedelta(seconds=61), tx_start=T0, phases=PHASES, voltage_v=VOLTS
    )
    assert later == pytest.approx(4.0)


def test_composite_is_the_lowest_of_station_max_and_the_transaction_limit() -> None:
    """Station max (in A) and the transaction limit (in W) combine as their minimum in kW."""
    station = make(Purpose.STATION_MAX, connector=0, limit=10, unit="A", profile_id=1)
    tx = make(Purpose.TX, limit=5000, profile_id=2)
    assert limit_now([station, tx]) == pytest.approx(5.0)
    assert limit_now([station, replace(tx, periods=(Period(0, 9000),))]) == pytest.approx(6.9)
    external = make(Purpose.EXTERNAL, connector=0, limit=2000, profile_id=3)
    assert limit_now([station, tx, external]) == pytest.approx(2.0)


def test_tx_profile_overrides_tx_default_only_during_a_transaction() -> None:
    """A TxProfile replaces the TxDefaultProfile (even when it allows more); without a
    transaction the default applies."""
    default = make(Purpose.TX_DEFAULT, limit=3000, profile_id=1, stack=5)
    tx = make(Purpose.TX, limit=8000, profile_id=2)
    assert limit_now([default, tx]) == pytest.approx(8.0)
    assert limit_now([default, tx], tx=False) == pytest.approx(3.0)


def test_connector_tx_default_overrides_the_station_wide_one() -> None:
    """A TxDefaultProfile on the connector beats one on connector 0; other connectors keep the
    station-wide default."""
    everywhere = make(Purpose.TX_DEFAULT, connector=0, limit=3000, profile_id=1, stack=9)
    here = make(Purpose.TX_DEFAULT, connector=1, limit=6000, profile_id=2)
    assert limit_now([everywhere, here], 1) == pytest.approx(6.0)
    assert limit_now([everywhere, here], 2) == pytest.approx(3.0)


def test_nothing_limits_without_profiles_or_on_other_connectors() -> None:
    """No profile in effect: no limit (None); a TxProfile on connector 2 leaves 1 alone."""
    assert limit_now([]) is None
    assert limit_now([make(connector=2)], 1) is None


# ---- composite schedules --------------------------------------------------------------------


def test_composite_schedule_merges_periods_and_caps_at_the_charger_max() -> None:
    """The composite over a window lists a period wherever the limit changes (in whole seconds
    from the window start), merges equal neighbours, and never exceeds the charger's max."""
    station = make(
        Purpose.STATION_MAX,
        connector=0,
        kind="Absolute",
        start=T0 - timedelta(seconds=100),
        duration_s=1000,
        periods=(Period(0, 20000), Period(200, 6000), Period(400, 6000), Period(700, 4000)),
    )
    tx = make(Purpose.TX, limit=16, unit="A", profile_id=2)  # 11.04 kW
    periods = composite_schedule(
        [station, tx], 1, T0, 3600, tx_start=T0, phases=PHASES, voltage_v=VOLTS, max_kw=11.0
    )
    assert periods == [Period(0, 11.0), Period(100, 6.0), Period(600, 4.0), Period(900, 11.0)]


def test_composite_schedule_starts_relative_profiles_at_the_window_without_transaction() -> None:
    """Without a transaction a Relative TxDefaultProfile runs from the window start."""
    default = make(Purpose.TX_DEFAULT, connector=0, periods=(Period(0, 2000), Period(60, 5000)))
    periods = composite_schedule(
        [default], 1, T0, 120, tx_start=None, phases=PHASES, voltage_v=VOLTS, max_kw=22.0
    )
    assert periods == [Period(0, 2.0), Period(60, 5.0)]


profiles_strategy = st.lists(
    st.builds(
        make,
        st.sampled_from(list(Purpose)),
        limit=st.integers(0, 40),
        unit=st.sampled_from(["A", "W"]),
        stack=st.integers(0, 3),
        connector=st.integers(0, 2),
        profile_id=st.integers(1, 5),
        kind=st.sampled_from(["Absolute", "Relative", "Recurring"]),
        recurrency=st.just("Daily"),
        start=st.integers(-7200, 7200).map(lambda s: T0 + timedelta(seconds=s)),
        duration_s=st.none() | st.integers(1, 7200),
        periods=st.lists(st.integers(0, 40000), min_size=1, max_size=4).map(
            lambda limits: tuple(Period(600 * i, float(x)) for i, x in enumerate(limits))
        ),
    ),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(profiles_strategy, st.booleans())
def test_composite_schedule_matches_the_limit_at_each_period(
    profiles: list[Profile], with_tx: bool
) -> None:
    """For any profiles the composite periods start at 0, increase, stay within [0, max], and
    each equals the composite limit at its start."""
    tx_start = T0 - timedelta(seconds=300) if with_tx else None
    periods = composite_schedule(
        profiles, 1, T0, 7200, tx_start=tx_start, phases=PHASES, voltage_v=VOLTS, max_kw=11.0
    )
    starts = [p.start_s for p in periods]
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    for period in periods:
        assert 0 <= period.limit <= 11.0
        at = T0 + timedelta(seconds=period.start_s)
        limit = composite_limit_kw(
            profiles, 1, at, tx_start=tx_start, origin=T0, phases=PHASES, voltage_v=VOLTS
        )
        assert period.limit == (11.0 if limit is None else min(limit, 11.0))
