"""What-if simulation of a site: base load, PV (scaled, curtailed), a battery and EV charging.

Sign convention: net load is grid import (kW, import positive); battery power is positive when
discharging. All series share one regular grid of ``step_minutes`` from ``start`` (UTC); each
value is the mean power over its step. The steps are worked out in this order:

1. PV: ``pv_kw * pv_scale``, limited to ``curtail_pct`` % of ``pv_rated_kw * pv_scale``.
2. EV charging, limited so that ``load - pv + ev`` stays within ``site_cap_kw``; energy held back
   is deferred to later steps (until the session's departure, or the end of the horizon).
3. The battery, on ``load - pv + ev``: its setpoints are clipped to its power and state-of-charge
   limits, and it never charges so hard that import exceeds ``site_cap_kw``.
"""

from __future__ import annotations

import math
from bisect import insort
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from derim.errors import TwinError
from derim.twin.dispatch import Floats, optimise_battery
from derim.twin.scenario import (
    Battery,
    BatteryParams,
    EvDemand,
    EvSession,
    SimulationSummary,
    Strategy,
)
from derim.twin.scenario import Scenario as Scenario  # re-exported with simulate()
from derim.twin.scenario import SimulationResult as SimulationResult

if TYPE_CHECKING:
    from derim.twin.base import Forecast  # pulls in pvlib; only its attributes are used here


def simulate(scenario: Scenario) -> SimulationResult:
    """Run ``scenario``; ``TwinError`` if the battery optimisation fails."""
    n, dt = len(scenario.load_kw), scenario.step_minutes / 60
    times = [scenario.start + i * scenario.step for i in range(n)]
    load = np.asarray(scenario.load_kw, dtype=float)
    pv, curtailed = _pv(scenario, n)
    cap = math.inf if scenario.site_cap_kw is None else scenario.site_cap_kw
    ev, unserved = _ev(scenario.ev, times, scenario.step, np.maximum(cap - load + pv, 0.0), dt)
    before = load - pv + ev
    battery, soc = np.zeros(n), np.zeros(0)
    if scenario.battery is not None:
        battery, soc = _battery(scenario, scenario.battery, before, cap, dt)
    net = before - battery
    imported, exported = np.maximum(net, 0.0), np.maximum(-net, 0.0)
    cost = None
    if scenario.price_per_kwh is not None:
        sell = scenario.export_price_per_kwh or np.zeros(n)
        cost = float(np.dot(scenario.price_per_kwh, imported) - np.dot(sell, exported)) * dt
    peak = int(np.argmax(net))
    summary = SimulationSummary(
        peak_import_kw=float(imported[peak]),
        peak_import_at=times[peak] if net[peak] > 0 else None,
        energy_imported_kwh=float(imported.sum() * dt),
        energy_exported_kwh=float(exported.sum() * dt),
        pv_energy_kwh=float(pv.sum() * dt),
        curtailed_pv_kwh=float(curtailed.sum() * dt),
        battery_throughput_kwh=float(np.abs(battery).sum() * dt),
        final_soc=float(soc[-1]) if soc.size else None,
        ev_energy_kwh=float(ev.sum() * dt),
        ev_unserved_kwh=float(unserved.sum()),
        energy_cost=cost,
    )
    return SimulationResult(
        times=times,
        net_load_kw=net.tolist(),
        pv_kw=pv.tolist(),
        battery_kw=battery.tolist(),
        soc=soc.tolist(),
        ev_kw=ev.tolist(),
        ev_unserved_kwh=unserved.tolist(),
        summary=summary,
    )


def scenario_from_forecasts(
    load: Forecast,
    pv: Forecast | None = None,
    *,
    band: Literal["p10", "p50", "p90"] = "p50",
    **changes: Any,
) -> Scenario:
    """A scenario on ``load``'s grid with its ``band`` as base load and ``pv``'s as PV (kW);
    ``changes`` add the other fields. ``TwinError`` if the grids differ or the step is not a
    whole number of minutes; pydantic's ``ValidationError`` if the scenario is invalid."""
    if pv is not None and not pv.index.equals(load.index):
        raise TwinError("the PV forecast must have the load forecast's steps")
    fields: dict[str, Any] = {
        "start": load.index[0].to_pydatetime(),
        "step_minutes": _step_minutes(load.index),
        "load_kw": getattr(load, band).tolist(),
        "pv_kw": None if pv is None else getattr(pv, band).tolist(),
    }
    return Scenario.model_validate(fields | changes)


def _step_minutes(index: pd.DatetimeIndex) -> int:
    """The step of a regular index in whole minutes; ``TwinError`` otherwise."""
    try:
        step = pd.Timedelta(index[1] - index[0] if len(index) > 1 else index.freq)
    except (TypeError, ValueError) as exc:
        raise TwinError("the forecast needs a regular step of whole minutes") from exc
    minutes = step / pd.Timedelta(minutes=1)
    if not (minutes > 0 and minutes == int(minutes)):
        raise TwinError("the forecast needs a regular step of whole minutes")
    return int(minutes)


def _pv(scenario: Scenario, n: int) -> tuple[Floats, Floats]:
    """PV output after scaling and curtailment, and the power curtailed (kW per step)."""
    if scenario.pv_kw is None:
        return np.zeros(n), np.zeros(n)
    scaled = np.asarray(scenario.pv_kw, dtype=float) * scenario.pv_scale
    if scenario.curtail_pct is None or scenario.pv_rated_kw is None:
        return scaled, np.zeros(n)
    limit = scenario.curtail_pct / 100 * scenario.pv_rated_kw * scenario.pv_scale
    output = np.minimum(scaled, limit)
    return output, scaled - output


def _ev(
    ev: EvDemand | None, times: list[datetime], step: timedelta, headroom: Floats, dt: float
) -> tuple[Floats, Floats]:
    """EV power (kW) within ``headroom`` (kW) and the energy given up in each step (kWh)."""
    n = len(times)
    if ev is None:
        return np.zeros(n), np.zeros(n)
    if ev.power_kw is not None:
        demand = np.asarray(ev.power_kw, dtype=float)
        limit = ev.max_power_kw if ev.max_power_kw is not None else float(demand.max())
        return _ev_profile(demand, np.minimum(headroom, limit), dt)
    assert ev.sessions is not None
    return _ev_sessions(ev.sessions, times, step, headroom, dt)


def _ev_profile(demand: Floats, limit: Floats, dt: float) -> tuple[Floats, Floats]:
    """Demand (kW) within ``limit`` (kW); what is held back is added to the next step's."""
    power, unserved = np.zeros(demand.size), np.zeros(demand.size)
    backlog = 0.0
    for i, wanted in enumerate(demand):
        want = wanted + backlog / dt
        power[i] = min(want, limit[i])
        backlog = (want - power[i]) * dt
    unserved[-1] = backlog
    return power, unserved


def _ev_sessions(
    sessions: list[EvSession],
    times: list[datetime],
    step: timedelta,
    headroom: Floats,
    dt: float,
) -> tuple[Floats, Floats]:
    """Each session charged as soon as possible, earliest departure first within ``headroom``."""
    n, start = len(times), times[0]
    power, unserved = np.zeros(n), np.zeros(n)
    remaining = [session.energy_kwh for session in sessions]
    first = [max(0, (s.arrival - start) // step) for s in sessions]
    last = [min(n - 1, -((start - s.departure) // step) - 1) for s in sessions]
    arrivals = sorted(range(len(sessions)), key=lambda k: first[k], reverse=True)
    active: list[int] = []
    for i, begin in enumerate(times):
        while arrivals and first[arrivals[-1]] <= i:
            insort(active, arrivals.pop(), key=lambda k: sessions[k].departure)
        budget = headroom[i] * dt
        for k in active:
            session = sessions[k]
            overlap = min(session.departure, begin + step) - max(session.arrival, begin)
            energy = min(remaining[k], session.max_power_kw * overlap / timedelta(hours=1), budget)
            remaining[k] -= energy
            budget -= energy
            power[i] += energy / dt
        unserved[i] = sum(remaining[k] for k in active if last[k] == i)
        active = [k for k in active if last[k] > i and remaining[k] > 0]
    return power, unserved


def _battery(
    scenario: Scenario, battery: Battery, net: Floats, cap: float, dt: float
) -> tuple[Floats, Floats]:
    """Battery power (kW) and end-of-step state of charge run against ``net`` (kW)."""
    lowest = np.minimum(net - cap, 0.0)
    if battery.schedule_kw is not None:
        wanted = np.asarray(battery.schedule_kw, dtype=float)
    elif battery.strategy is Strategy.PEAK_SHAVE:
        assert battery.target_import_kw is not None
        wanted = net - battery.target_import_kw
    else:
        plan = optimise_battery(
            net,
            dt,
            battery,
            objective=battery.objective,
            price=scenario.price_per_kwh,
            export_price=scenario.export_price_per_kwh or 0.0,
            max_import_kw=None if math.isinf(cap) else net - lowest,
            final_soc_at_least_initial=battery.final_soc_at_least_initial,
        )
        wanted = plan.power_kw
    return run_battery(battery, wanted, lowest, dt)


def run_battery(
    battery: BatteryParams, wanted_kw: Floats, lowest_kw: Floats, dt: float
) -> tuple[Floats, Floats]:
    """Battery power (kW) carrying out ``wanted_kw`` as far as power limits, ``lowest_kw`` (the
    most negative power allowed per step) and state-of-charge bounds let it, and the state of
    charge at the end of each step (0-1); steps of ``dt`` hours."""
    eta = battery.one_way_efficiency
    capacity = battery.capacity_kwh
    e_min, e_max = battery.min_soc * capacity, battery.max_soc * capacity
    energy = battery.initial_soc * capacity
    power, soc = np.zeros(wanted_kw.size), np.zeros(wanted_kw.size)
    for i, wanted in enumerate(wanted_kw):
        p = min(max(float(wanted), -battery.power_kw, float(lowest_kw[i])), battery.power_kw)
        if p >= 0:
            p = min(p, (energy - e_min) * eta / dt)
            energy -= p * dt / eta
        else:
            p = max(p, (energy - e_max) / (eta * dt))
            energy -= p * eta * dt
        energy = min(max(energy, e_min), e_max)
        power[i], soc[i] = p, energy / capacity
    return power, soc
