"""The battery dispatch LP: peak and cost optima, bounds, infeasibility, speed, control schedule."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from derim.control.schedules import ScheduleRequest
from derim.errors import TwinError
from derim.models.command import CommandType
from derim.twin.dispatch import BatteryParams, Objective, optimise_battery, to_schedule_request

START = datetime(2024, 6, 3, tzinfo=UTC)


def _battery(**changes: float) -> BatteryParams:
    """A 4 kWh, 5 kW lossless battery, full unless ``changes`` say otherwise."""
    values = {"capacity_kwh": 4.0, "power_kw": 5.0, "initial_soc": 1.0, "efficiency": 1.0}
    return BatteryParams.model_validate(values | changes)


def test_peak_reaches_the_energy_limited_optimum() -> None:
    """Loads 7 and 9 kW with 4 kWh to spend: both steps end at (7 + 9 - 4) / 2 = 6 kW."""
    result = optimise_battery([7.0, 9.0], 1.0, _battery())
    assert result.objective == pytest.approx(6.0, abs=1e-6)
    assert result.power_kw == pytest.approx([1.0, 3.0], abs=1e-6)


def test_peak_optimum_counts_discharge_losses() -> None:
    """At 81 % round trip, 4 kWh stored give 3.6 kWh: the peak is (16 - 3.6) / 2 = 6.2 kW."""
    result = optimise_battery([7.0, 9.0], 1.0, _battery(efficiency=0.81))
    assert result.objective == pytest.approx(6.2, abs=1e-6)


def test_peak_is_limited_by_power() -> None:
    """A 5 kW battery with energy to spare takes a 12 kW spike down to 7 kW, no further."""
    result = optimise_battery([2.0, 12.0, 2.0], 1.0, _battery(capacity_kwh=100.0))
    assert result.objective == pytest.approx(7.0, abs=1e-6)


def test_schedule_stays_within_power_and_soc_bounds() -> None:
    """On a noisy week the schedule keeps to +-power_kw and min_soc..max_soc at every step."""
    rng = np.random.default_rng(7)
    net = 4 + 3 * np.sin(np.arange(672) / 15) + rng.normal(0, 1, 672)
    battery = _battery(capacity_kwh=10.0, power_kw=3.0, initial_soc=0.5, min_soc=0.2, max_soc=0.9)
    result = optimise_battery(net, 0.25, battery)
    assert np.all(np.abs(result.power_kw) <= 3.0 + 1e-7)
    assert np.all((result.soc >= 0.2 - 1e-7) & (result.soc <= 0.9 + 1e-7))


def test_cost_charges_cheap_and_discharges_dear() -> None:
    """Prices 0.1, 0.1, 0.5, 0.5: charge 2 kW at 0.1, discharge 2 kW at 0.5; cost 3.6 -> 2.0."""
    battery = _battery(power_kw=2.0, initial_soc=0.0)
    price = [0.1, 0.1, 0.5, 0.5]
    result = optimise_battery([3.0] * 4, 1.0, battery, objective=Objective.COST, price=price)
    assert result.power_kw == pytest.approx([-2.0, -2.0, 2.0, 2.0], abs=1e-6)
    assert result.objective == pytest.approx(2.0, abs=1e-6)


def test_cost_skips_a_spread_smaller_than_the_losses() -> None:
    """At 81 % round trip, buying at 0.10 to save 0.105 loses money: the battery stays idle."""
    battery = _battery(initial_soc=0.0, efficiency=0.81)
    result = optimise_battery(
        [3.0, 3.0], 1.0, battery, objective=Objective.COST, price=[0.1, 0.105]
    )
    assert result.power_kw == pytest.approx([0.0, 0.0], abs=1e-6)


def test_final_soc_can_be_held_at_initial() -> None:
    """With final_soc_at_least_initial the peak plan ends at least as full as it started."""
    battery = _battery(capacity_kwh=10.0, initial_soc=0.5)
    free = optimise_battery([2.0, 9.0, 9.0], 1.0, battery)
    held = optimise_battery([2.0, 9.0, 9.0], 1.0, battery, final_soc_at_least_initial=True)
    assert free.soc[-1] < 0.5 - 1e-3
    assert held.soc[-1] >= 0.5 - 1e-7


def test_unreachable_import_cap_is_a_twin_error() -> None:
    """A 10 kW load, a 5 kW battery and a 3 kW import cap cannot be met: TwinError, not NaNs."""
    with pytest.raises(TwinError, match="import cap"):
        optimise_battery([10.0], 1.0, _battery(), max_import_kw=3.0)


def test_export_price_above_import_price_is_refused() -> None:
    """Selling dearer than buying would make the LP unbounded: refused with the step named."""
    with pytest.raises(TwinError, match="step 1"):
        optimise_battery(
            [1.0, 1.0],
            1.0,
            _battery(),
            objective=Objective.COST,
            price=[0.2, 0.2],
            export_price=[0.1, 0.3],
        )


def test_non_finite_load_is_a_twin_error() -> None:
    """A NaN in the net load is refused, naming the series."""
    with pytest.raises(TwinError, match="net_load_kw"):
        optimise_battery([1.0, float("nan")], 1.0, _battery())


def test_a_week_of_quarter_hours_solves_well_under_a_second() -> None:
    """672 steps (168 h at 15 min) solve, for both objectives, in under a second each."""
    rng = np.random.default_rng(1)
    hours = np.arange(672) / 4
    net = 5 + 4 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, 672)
    price = 0.2 + 0.1 * np.sin(2 * np.pi * (hours - 6) / 24)
    battery = _battery(capacity_kwh=20.0, initial_soc=0.5, efficiency=0.9)
    for objective in Objective:
        began = time.perf_counter()
        optimise_battery(net, 0.25, battery, objective=objective, price=price)
        assert time.perf_counter() - began < 1.0


def test_schedule_request_has_one_entry_per_change() -> None:
    """Setpoints 0,0,2,2,-1,-1,0 give entries at steps 0, 2, 4 and 6, as set_active_power."""
    power = [0.0, 0.0, 2.0, 2.0000000001, -1.0, -1.0, 0.0]
    step = timedelta(minutes=15)
    request = to_schedule_request("bess-1", START, step, power)
    assert [entry.at for entry in request.entries] == [START + i * step for i in (0, 2, 4, 6)]
    assert [entry.value for entry in request.entries] == [0.0, 2.0, -1.0, 0.0]
    assert {entry.command for entry in request.entries} == {CommandType.SET_ACTIVE_POWER}
    assert ScheduleRequest.model_validate_json(request.model_dump_json()) == request


def test_schedule_request_returns_to_zero_at_the_end() -> None:
    """A schedule ending on a non-zero setpoint gets a 0 kW entry one step after its last."""
    step = timedelta(hours=1)
    request = to_schedule_request("bess-1", START, step, [3.0, 3.0])
    assert [(entry.at, entry.value) for entry in request.entries] == [
        (START, 3.0),
        (START + 2 * step, 0.0),
    ]


def test_schedule_request_refuses_more_entries_than_the_control_layer_takes() -> None:
    """Over 1000 setpoint changes is a TwinError, not a failed ScheduleRequest validation."""
    power = [float(i % 2) for i in range(1200)]
    with pytest.raises(TwinError, match="1000"):
        to_schedule_request("bess-1", START, timedelta(minutes=1), power)
