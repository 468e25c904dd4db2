"""What-if simulation: PV scaling and curtailment, battery physics and strategies, EV deferral,
scenario validation and scenarios built from forecasts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from derim.errors import TwinError
from derim.twin.base import Forecast
from derim.twin.simulate import Scenario, SimulationResult, scenario_from_forecasts, simulate

START = datetime(2024, 6, 3, tzinfo=UTC)


def _run(load: list[float], step_minutes: int = 60, **changes: Any) -> SimulationResult:
    """Simulate ``load`` (kW) from ``START`` with the scenario fields in ``changes``."""
    return simulate(
        Scenario.model_validate(
            {"start": START, "step_minutes": step_minutes, "load_kw": load} | changes
        )
    )


def _battery(**changes: Any) -> dict[str, Any]:
    """A 10 kWh, 5 kW lossless battery, full; ``changes`` add the control and any other field."""
    return {"capacity_kwh": 10.0, "power_kw": 5.0, "initial_soc": 1.0, "efficiency": 1.0} | changes


def _errors(**fields: Any) -> dict[tuple[int | str, ...], str]:
    """The validation errors of a two-step scenario with ``fields``: message by location."""
    with pytest.raises(ValidationError) as caught:
        Scenario.model_validate({"start": START, "load_kw": [1.0, 1.0]} | fields)
    return {tuple(error["loc"]): error["msg"] for error in caught.value.errors()}


def test_pv_scaling_changes_net_load_and_energy() -> None:
    """PV 0,1,3,0 kW scaled by 1.5 against 2 kW load: net 2,0.5,-2.5,2; 4.5 kWh in, 2.5 out."""
    result = _run([2.0] * 4, pv_kw=[0.0, 1.0, 3.0, 0.0], pv_scale=1.5)
    assert result.pv_kw == pytest.approx([0.0, 1.5, 4.5, 0.0])
    assert result.net_load_kw == pytest.approx([2.0, 0.5, -2.5, 2.0])
    assert result.summary.energy_imported_kwh == pytest.approx(4.5)
    assert result.summary.energy_exported_kwh == pytest.approx(2.5)
    assert result.summary.pv_energy_kwh == pytest.approx(6.0)


def test_curtailment_limits_pv_to_percent_of_scaled_rating() -> None:
    """50 % of 4 kW rated x 1.5 = 3 kW: 4.5 kW is cut to 3; half-hour steps halve the kWh."""
    result = _run(
        [2.0] * 4,
        step_minutes=30,
        pv_kw=[0.0, 1.0, 3.0, 0.0],
        pv_scale=1.5,
        pv_rated_kw=4.0,
        curtail_pct=50.0,
    )
    assert result.pv_kw == pytest.approx([0.0, 1.5, 3.0, 0.0])
    assert result.net_load_kw == pytest.approx([2.0, 0.5, -1.0, 2.0])
    assert result.summary.curtailed_pv_kwh == pytest.approx(0.75)
    assert result.summary.energy_exported_kwh == pytest.approx(0.5)
    assert result.summary.energy_imported_kwh == pytest.approx(2.25)


def test_schedule_is_clipped_at_min_soc() -> None:
    """5 kWh stored, 2 kWh floor: a 5 kW discharge for two hours delivers 3 kW, then nothing."""
    battery = _battery(initial_soc=0.5, min_soc=0.2, schedule_kw=[5.0, 5.0])
    result = _run([6.0, 6.0], battery=battery)
    assert result.battery_kw == pytest.approx([3.0, 0.0])
    assert result.soc == pytest.approx([0.2, 0.2])
    assert result.net_load_kw == pytest.approx([3.0, 6.0])


def test_efficiency_is_split_evenly_between_charge_and_discharge() -> None:
    """At 81 % round trip, 1 kWh charged stores 0.9 kWh, and 0.9 kWh stored gives 0.81 kWh."""
    battery = _battery(initial_soc=0.0, efficiency=0.81, schedule_kw=[-1.0, 5.0])
    result = _run([2.0, 2.0], battery=battery)
    assert result.soc[0] == pytest.approx(0.09)
    assert result.battery_kw == pytest.approx([-1.0, 0.81])
    assert result.summary.final_soc == pytest.approx(0.0, abs=1e-12)
    assert result.summary.battery_throughput_kwh == pytest.approx(1.81)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0, 50), st.floats(-20, 20)), min_size=1, max_size=48),
    capacity=st.floats(0.1, 100),
    power=st.floats(0.1, 20),
    window=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)).map(sorted),
    efficiency=st.floats(0.5, 1),
    step_minutes=st.sampled_from([5, 15, 60]),
)
def test_battery_never_leaves_its_bounds(
    data: list[tuple[float, float]],
    capacity: float,
    power: float,
    window: list[float],
    efficiency: float,
    step_minutes: int,
) -> None:
    """Any schedule: |power| <= power_kw, SoC within min..max, and each SoC change matches the
    power through sqrt(efficiency) each way."""
    low, initial, high = window
    assume(high - low > 1e-3)
    load, schedule = (list(values) for values in zip(*data, strict=True))
    battery = {
        "capacity_kwh": capacity,
        "power_kw": power,
        "initial_soc": initial,
        "min_soc": low,
        "max_soc": high,
        "efficiency": efficiency,
        "schedule_kw": schedule,
    }
    result = _run(load, step_minutes, battery=battery)
    power_kw, soc = np.array(result.battery_kw), np.array([initial, *result.soc])
    assert np.all(np.abs(power_kw) <= power + 1e-9)
    assert np.all((soc >= low - 1e-9) & (soc <= high + 1e-9))
    eta, hours = math.sqrt(efficiency), step_minutes / 60
    stored = np.where(power_kw < 0, -power_kw * eta, -power_kw / eta) * hours
    assert np.diff(soc) * capacity == pytest.approx(stored, abs=1e-6)


def test_peak_shaving_lowers_the_peak_to_the_target() -> None:
    """Loads 2,2,8,8,2,2 with target 5: 3 kW out at the peak, 3 kW back after; peak 8 -> 5."""
    battery = _battery(strategy="peak_shave", target_import_kw=5.0)
    result = _run([2.0, 2.0, 8.0, 8.0, 2.0, 2.0], battery=battery)
    assert result.net_load_kw == pytest.approx([2.0, 2.0, 5.0, 5.0, 5.0, 5.0])
    assert result.summary.peak_import_kw == pytest.approx(5.0)
    assert result.summary.peak_import_at == START + timedelta(hours=2)
    assert result.summary.final_soc == pytest.approx(1.0)


def test_peak_shaving_runs_out_of_energy() -> None:
    """With 4 kWh the greedy shave covers 3 kWh, then 1 kWh: the second peak step is 7 kW."""
    battery = _battery(capacity_kwh=4.0, strategy="peak_shave", target_import_kw=5.0)
    result = _run([2.0, 8.0, 8.0], battery=battery)
    assert result.net_load_kw == pytest.approx([2.0, 5.0, 7.0])
    assert result.summary.peak_import_kw == pytest.approx(7.0)


def test_optimise_beats_or_equals_greedy_peak_shaving() -> None:
    """On loads 7, 9 with 4 kWh the LP reaches 6 kW; greedy at any target does no better."""
    optimised = _run([7.0, 9.0], battery=_battery(capacity_kwh=4.0, strategy="optimise"))
    assert optimised.summary.peak_import_kw == pytest.approx(6.0, abs=1e-6)
    for target in (4.0, 5.0, 6.0, 6.5, 7.0):
        greedy = _run(
            [7.0, 9.0],
            battery=_battery(capacity_kwh=4.0, strategy="peak_shave", target_import_kw=target),
        )
        assert optimised.summary.peak_import_kw <= greedy.summary.peak_import_kw + 1e-6
    assert greedy.summary.peak_import_kw == pytest.approx(7.0)


@settings(max_examples=40, deadline=None)
@given(
    load=st.lists(st.floats(0, 20), min_size=1, max_size=24),
    capacity=st.floats(0.5, 30),
    initial=st.floats(0, 1),
    target=st.floats(0, 20),
)
def test_optimise_never_peaks_above_greedy(
    load: list[float], capacity: float, initial: float, target: float
) -> None:
    """On any profile the LP's peak import is at most the greedy shave's, whatever its target."""
    battery = _battery(capacity_kwh=capacity, initial_soc=initial, efficiency=0.9)
    greedy = _run(load, battery=battery | {"strategy": "peak_shave", "target_import_kw": target})
    optimised = _run(load, battery=battery | {"strategy": "optimise"})
    assert optimised.summary.peak_import_kw <= greedy.summary.peak_import_kw + 1e-6


def test_optimise_for_cost_lowers_the_bill() -> None:
    """Prices 0.1, 0.5, 3 kW load, empty 2 kW battery: 0.3 + 1.5 = 1.8 -> 0.5 + 0.5 = 1.0."""
    price = [0.1, 0.5]
    bare = _run([3.0, 3.0], price_per_kwh=price)
    battery = _battery(initial_soc=0.0, power_kw=2.0, strategy="optimise", objective="cost")
    result = _run([3.0, 3.0], battery=battery, price_per_kwh=price)
    assert bare.summary.energy_cost == pytest.approx(1.8)
    assert result.battery_kw == pytest.approx([-2.0, 2.0], abs=1e-6)
    assert result.summary.energy_cost == pytest.approx(1.0, abs=1e-6)


def test_battery_never_charges_past_the_site_cap() -> None:
    """Charging at 5 kW on a 3 kW load with a 6 kW cap is held to 3 kW of charge."""
    battery = _battery(initial_soc=0.0, schedule_kw=[-5.0])
    result = _run([3.0], site_cap_kw=6.0, battery=battery)
    assert result.battery_kw == pytest.approx([-3.0])


def test_capped_ev_demand_is_deferred() -> None:
    """6 kW of EV demand for two hours under a 6 kW cap on a 2 kW load runs as 4,4,4 kW."""
    result = _run([2.0] * 4, site_cap_kw=6.0, ev={"power_kw": [6.0, 6.0, 0.0, 0.0]})
    assert result.ev_kw == pytest.approx([4.0, 4.0, 4.0, 0.0])
    assert result.summary.ev_energy_kwh == pytest.approx(12.0)
    assert result.summary.ev_unserved_kwh == 0.0
    assert result.summary.peak_import_kw == pytest.approx(6.0)


def test_ev_energy_left_at_the_end_is_unserved() -> None:
    """Demand that the cap pushes past the last step is reported as unserved at that step."""
    result = _run([2.0] * 2, site_cap_kw=6.0, ev={"power_kw": [6.0, 6.0]})
    assert result.ev_kw == pytest.approx([4.0, 4.0])
    assert result.ev_unserved_kwh == pytest.approx([0.0, 4.0])


def test_ev_session_charges_within_its_stay() -> None:
    """10 kWh at 4 kW from 00:30 to 02:30 on hourly steps: 2, 4, 2 kWh; 2 kWh unserved."""
    session = {
        "arrival": START + timedelta(minutes=30),
        "departure": START + timedelta(hours=2, minutes=30),
        "energy_kwh": 10.0,
        "max_power_kw": 4.0,
    }
    result = _run([1.0] * 4, ev={"sessions": [session]})
    assert result.ev_kw == pytest.approx([2.0, 4.0, 2.0, 0.0])
    assert result.ev_unserved_kwh == pytest.approx([0.0, 0.0, 2.0, 0.0])


def test_capped_sessions_serve_the_earliest_departure_first() -> None:
    """Two 4 kWh cars sharing 4 kW of headroom: the one leaving first charges first."""
    late = {"arrival": START, "departure": START + timedelta(hours=3)}
    early = {"arrival": START, "departure": START + timedelta(hours=1)}
    sessions = [car | {"energy_kwh": 4.0, "max_power_kw": 4.0} for car in (late, early)]
    result = _run([2.0] * 3, site_cap_kw=6.0, ev={"sessions": sessions})
    assert result.ev_kw == pytest.approx([4.0, 4.0, 0.0])
    assert result.summary.ev_unserved_kwh == 0.0


def test_nothing_imported_has_no_peak_time() -> None:
    """A site that only exports reports a 0 kW peak import at no time."""
    result = _run([1.0], pv_kw=[3.0])
    assert result.summary.peak_import_kw == 0.0
    assert result.summary.peak_import_at is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_load_names_the_value(bad: float) -> None:
    """NaN or infinity in load_kw is refused at its index."""
    assert ("load_kw", 1) in _errors(load_kw=[1.0, bad])


def test_negative_capacity_names_the_field() -> None:
    """A negative battery capacity is refused at battery.capacity_kwh."""
    errors = _errors(battery=_battery(capacity_kwh=-1.0, schedule_kw=[0.0, 0.0]))
    assert ("battery", "capacity_kwh") in errors


@pytest.mark.parametrize(
    ("fields", "location", "words"),
    [
        ({"pv_kw": [1.0, 2.0, 3.0]}, ("pv_kw",), "pv_kw has 3 values, load_kw has 2"),
        (
            {"battery": _battery(schedule_kw=[1.0])},
            ("battery",),
            "battery.schedule_kw has 1 values",
        ),
        ({"ev": {"power_kw": [1.0]}}, ("ev",), "ev.power_kw has 1 values"),
        ({"pv_kw": [1.0, 1.0], "curtail_pct": 50.0}, ("curtail_pct",), "needs pv_rated_kw"),
        ({"battery": _battery(strategy="optimise", objective="cost")}, ("battery",), "price"),
        ({"battery": _battery(strategy="peak_shave")}, ("battery",), "target_import_kw"),
        ({"battery": _battery(initial_soc=0.1, min_soc=0.2)}, ("battery",), "initial_soc"),
        ({"pv_scale": -1.0}, ("pv_scale",), "greater than or equal to 0"),
        ({"curtail_pct": 150.0}, ("curtail_pct",), "less than or equal to 100"),
    ],
)
def test_invalid_scenario_names_the_field(
    fields: dict[str, Any], location: tuple[str, ...], words: str
) -> None:
    """Mismatched lengths, missing companions and out-of-range values are refused, naming it."""
    errors = _errors(**fields)
    assert location in errors
    assert words in errors[location]


def test_scenario_from_forecasts_takes_the_grid_and_band() -> None:
    """Forecasts on a 15-min grid give start, step_minutes and the chosen band as kW series."""
    index = pd.date_range(START, periods=3, freq="15min")
    load = Forecast("naive", index, np.array([1.0, 2, 3]), np.array([2.0, 3, 4]), np.zeros(3) + 9)
    pv = Forecast("naive", index, np.zeros(3), np.array([0.5, 1, 0]), np.ones(3))
    scenario = scenario_from_forecasts(load, pv, band="p50", pv_scale=2.0)
    assert (scenario.start, scenario.step_minutes) == (START, 15)
    assert (scenario.load_kw, scenario.pv_kw) == ([2.0, 3.0, 4.0], [0.5, 1.0, 0.0])
    assert simulate(scenario).net_load_kw == pytest.approx([1.0, 1.0, 4.0])


def test_scenario_from_forecasts_refuses_mismatched_grids() -> None:
    """A PV forecast on other steps than the load's is a TwinError."""
    index = pd.date_range(START, periods=3, freq="15min")
    load = Forecast("naive", index, np.zeros(3), np.ones(3), np.ones(3))
    pv = Forecast("naive", index + pd.Timedelta(minutes=15), np.zeros(3), np.ones(3), np.ones(3))
    with pytest.raises(TwinError, match="PV forecast"):
        scenario_from_forecasts(load, pv)
