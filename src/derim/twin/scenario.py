"""What-if scenarios and their results as API models: a site's series on one grid of steps, a
battery (ratings and how it is run), EV demand, and the simulated series with their summary.

Kept apart from :mod:`derim.twin.simulate` and :mod:`derim.twin.dispatch` so that the API can
declare its routes without importing NumPy, pandas or SciPy; those load on the first simulation.
Powers in kW, energies in kWh, states of charge as 0-1, times UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from derim.models.common import UtcDatetime

MAX_KW = 1e6
"""Largest power (kW) or energy (kWh) accepted anywhere in the twin's simulation: 1 GW."""
MAX_DISPATCH_STEPS = 4 * 24 * 31
"""Longest horizon the optimiser takes: a month of 15-minute steps."""

MAX_STEPS = 366 * 96
"""Longest scenario: a leap year of 15-minute steps."""
MAX_PRICE = 1e4
"""Largest price magnitude accepted (currency/kWh)."""
MAX_SESSIONS = 1000
Kw = Annotated[float, Field(ge=0, le=MAX_KW)]
SignedKw = Annotated[float, Field(ge=-MAX_KW, le=MAX_KW)]
Price = Annotated[float, Field(ge=-MAX_PRICE, le=MAX_PRICE)]


class Objective(StrEnum):
    """What the optimiser minimises."""

    PEAK = "peak"
    COST = "cost"


class BatteryParams(BaseModel):
    """A battery's ratings and state: energy in kWh, power in kW, states of charge as 0-1."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    capacity_kwh: float = Field(gt=0, le=MAX_KW, description="Usable capacity (kWh).")
    power_kw: float = Field(gt=0, le=MAX_KW, description="Charge and discharge limit (kW, AC).")
    initial_soc: float = Field(ge=0, le=1, description="State of charge at the start (0-1).")
    min_soc: float = Field(0.0, ge=0, le=1, description="Lowest state of charge allowed (0-1).")
    max_soc: float = Field(1.0, ge=0, le=1, description="Highest state of charge allowed (0-1).")
    efficiency: float = Field(
        0.9, gt=0, le=1, description="Round-trip efficiency (0-1], split sqrt(eta) each way."
    )

    @model_validator(mode="after")
    def _soc_window(self) -> BatteryParams:
        if self.min_soc >= self.max_soc:
            raise ValueError("min_soc must be below max_soc")
        if not self.min_soc <= self.initial_soc <= self.max_soc:
            raise ValueError("initial_soc must lie within min_soc..max_soc")
        return self

    @property
    def one_way_efficiency(self) -> float:
        """Charge and discharge efficiency each: sqrt of the round trip."""
        return math.sqrt(self.efficiency)


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
