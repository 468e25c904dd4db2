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
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from derim.errors import TwinError
from derim.models.common import UtcDatetime
from derim.twin.dispatch import (
    MAX_DISPATCH_STEPS,
    MAX_KW,
    BatteryParams,
    Floats,
    Objective,
    optimise_battery,
)

if TYPE_CHECKING:
    from derim.twin.base import Forecast  # pulls in pvlib; only its attributes are used here

MAX_STEPS = 366 * 96
"""Longest scenario: a leap year of 15-minute steps."""
MAX_PRICE = 1e4
"""Largest price magnitude accepted (currency/kWh)."""
MAX_SESSIONS = 1000
Kw = Annotated[float, Field(ge=0, le=MAX_KW)]
SignedKw = Annotated[float, Field(ge=-MAX_KW, le=MAX_KW)]
Price = Annotated[float, Field(ge=-MAX_PRICE, le=MAX_PRICE)]


class Strategy(StrEnum):
    """How a battery without a schedule is run."""

    PEAK_SHAVE = "peak_shave"
    OPTIMISE = "optimise"


class Battery(BatteryParams):
    """A battery and how it is run: a schedule of setpoints, or a strategy."""

    schedule_kw: list[SignedKw] | None = Field(
        None, description="Setpoint per step (kW, + discharge, - charge); clipped to the limits."
    )
    strategy: Strategy | None = Field(
        None,
        description="peak_shave: discharge above target_import_kw and recharge below it, "
        "greedily; optimise: the linear programme of derim.twin.dispatch.",
    )
    target_import_kw: float | None = Field(
        None, ge=0, le=MAX_KW, description="Import the peak_shave strategy aims at (kW)."
    )
    objective: Objective = Field(
        Objective.PEAK, description="What optimise minimises: peak import, or energy cost."
    )
    final_soc_at_least_initial: bool = Field(
        False, description="optimise only: end with at least the initial state of charge."
    )

    @model_validator(mode="after")
    def _one_control(self) -> Battery:
        if (self.schedule_kw is None) == (self.strategy is None):
            raise ValueError("give either schedule_kw or strategy")
        if (self.strategy is Strategy.PEAK_SHAVE) != (self.target_import_kw is not None):
            raise ValueError("target_import_kw goes with strategy peak_shave, and only with it")
        return self


class EvSession(BaseModel):
    """One EV's visit: it charges as fast as it may from arrival until it has its energy."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    arrival: UtcDatetime
    departure: UtcDatetime
    energy_kwh: float = Field(gt=0, le=MAX_KW, description="Energy wanted (kWh).")
    max_power_kw: float = Field(gt=0, le=MAX_KW, description="Charging limit (kW).")

    @model_validator(mode="after")
    def _ordered(self) -> EvSession:
        if self.departure <= self.arrival:
            raise ValueError("departure must be after arrival")
        return self


class EvDemand(BaseModel):
    """EV charging: a demand per step, or sessions."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    power_kw: list[Kw] | None = Field(None, description="Charging demand per step (kW).")
    max_power_kw: float | None = Field(
        None,
        gt=0,
        le=MAX_KW,
        description="With power_kw: the most the EVs draw, deferred energy included (kW); "
        "default the largest demand.",
    )
    sessions: list[EvSession] | None = Field(None, max_length=MAX_SESSIONS)

    @model_validator(mode="after")
    def _one_kind(self) -> EvDemand:
        if (self.power_kw is None) == (self.sessions is None):
            raise ValueError("give either power_kw or sessions")
        if self.max_power_kw is not None and self.power_kw is None:
            raise ValueError("max_power_kw goes with power_kw (sessions have their own)")
        return self


class Scenario(BaseModel):
    """A what-if: series on one grid of ``step_minutes`` from ``start``, and modifications."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    start: UtcDatetime = Field(description="Start of the first step (UTC).")
    step_minutes: int = Field(15, ge=1, le=1440, description="Step length (minutes).")
    load_kw: list[Kw] = Field(
        min_length=1, max_length=MAX_STEPS, description="Base load per step (kW)."
    )
    pv_kw: list[Kw] | None = Field(None, description="PV output forecast per step (kW).")
    pv_scale: float = Field(1.0, ge=0, le=1000, description="PV capacity factor (1.5: +50 %).")
    pv_rated_kw: float | None = Field(
        None, gt=0, le=MAX_KW, description="Rated power of the PV in pv_kw (kW, before scaling)."
    )
    curtail_pct: float | None = Field(
        None, ge=0, le=100, description="PV limit, % of its rated power after scaling."
    )
    site_cap_kw: float | None = Field(
        None, gt=0, le=MAX_KW, description="Site import limit EV charging and batteries keep to."
    )
    price_per_kwh: list[Price] | None = Field(None, description="Import price per step.")
    export_price_per_kwh: list[Price] | None = Field(
        None, description="Export price per step (default 0)."
    )
    battery: Battery | None = None
    ev: EvDemand | None = None

    @property
    def step(self) -> timedelta:
        """The step as a timedelta."""
        return timedelta(minutes=self.step_minutes)

    @field_validator("load_kw")
    @classmethod
    def _fits_calendar(cls, load: list[float], info: ValidationInfo) -> list[float]:
        start, minutes = info.data.get("start"), info.data.get("step_minutes")
        if start is not None and minutes is not None:
            try:
                start + len(load) * timedelta(minutes=minutes)
            except OverflowError as exc:
                raise ValueError("the scenario runs past year 9999") from exc
        return load

    @field_validator("pv_kw", "price_per_kwh", "export_price_per_kwh")
    @classmethod
    def _same_length(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        _check_length(values, info, info.field_name or "")
        return values

    @field_validator("curtail_pct")
    @classmethod
    def _curtail_needs_rating(cls, pct: float | None, info: ValidationInfo) -> float | None:
        for needed in ("pv_kw", "pv_rated_kw"):
            if pct is not None and needed in info.data and info.data[needed] is None:
                raise ValueError(f"curtail_pct needs {needed}")
        return pct

    @field_validator("battery")
    @classmethod
    def _battery_fits(cls, battery: Battery | None, info: ValidationInfo) -> Battery | None:
        if battery is None:
            return None
        _check_length(battery.schedule_kw, info, "battery.schedule_kw")
        if battery.strategy is not Strategy.OPTIMISE:
            return battery
        if len(info.data.get("load_kw", ())) > MAX_DISPATCH_STEPS:
            raise ValueError(f"strategy optimise takes at most {MAX_DISPATCH_STEPS} steps")
        if battery.objective is Objective.COST:
            price = info.data.get("price_per_kwh", [])
            if price is None:
                raise ValueError("objective cost needs price_per_kwh")
            sell = info.data.get("export_price_per_kwh") or []
            if any(s > p for s, p in zip(sell, price, strict=False)):
                raise ValueError("objective cost needs export_price_per_kwh <= price_per_kwh")
        return battery

    @field_validator("ev")
    @classmethod
    def _ev_fits(cls, ev: EvDemand | None, info: ValidationInfo) -> EvDemand | None:
        if ev is None:
            return None
        _check_length(ev.power_kw, info, "ev.power_kw")
        start, end = _span(info)
        if start is None or end is None:
            return ev
        for k, session in enumerate(ev.sessions or ()):
            if session.departure <= start or session.arrival >= end:
                raise ValueError(f"ev.sessions[{k}] lies outside the scenario")
        return ev


def _span(info: ValidationInfo) -> tuple[datetime | None, datetime | None]:
    """Start and end of the scenario validated so far (None where unknown)."""
    start, minutes, load = (info.data.get(k) for k in ("start", "step_minutes", "load_kw"))
    if start is None or minutes is None or load is None:
        return start, None
    return start, start + len(load) * timedelta(minutes=minutes)


def _check_length(values: list[float] | None, info: ValidationInfo, name: str) -> None:
    """A ``ValueError`` unless ``values`` (if given) has one value per step of ``load_kw``."""
    load = info.data.get("load_kw")
    if values is not None and load is not None and len(values) != len(load):
        raise ValueError(f"{name} has {len(values)} values, load_kw has {len(load)}")


class SimulationSummary(BaseModel):
    """Totals over the scenario."""

    peak_import_kw: float = Field(description="Highest import (kW); 0 if nothing is imported.")
    peak_import_at: datetime | None = Field(description="Start of that step (UTC).")
    energy_imported_kwh: float
    energy_exported_kwh: float
    pv_energy_kwh: float = Field(description="PV energy after scaling and curtailment (kWh).")
    curtailed_pv_kwh: float
    battery_throughput_kwh: float = Field(description="Energy charged plus discharged (kWh).")
    final_soc: float | None = Field(description="Battery state of charge at the end (0-1).")
    ev_energy_kwh: float
    ev_unserved_kwh: float = Field(description="EV energy not delivered in time (kWh).")
    energy_cost: float | None = Field(description="Imports at price less exports (currency).")


class SimulationResult(BaseModel):
    """Per-step series (kW unless stated) and their summary."""

    times: list[datetime] = Field(description="Start of each step (UTC).")
    net_load_kw: list[float] = Field(description="Grid import (kW, import positive).")
    pv_kw: list[float]
    battery_kw: list[float] = Field(description="Battery power (kW, + discharge, - charge).")
    soc: list[float] = Field(description="State of charge at the end of each step (0-1).")
    ev_kw: list[float]
    ev_unserved_kwh: list[float] = Field(description="EV energy given up in each step (kWh).")
    summary: SimulationSummary


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
