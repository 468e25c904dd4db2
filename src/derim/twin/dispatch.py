"""Optimal battery dispatch as a linear programme (SciPy's HiGHS), and its control schedule.

Per step ``t`` the battery charges ``ch_t`` and discharges ``dis_t`` (kW, AC side, both >= 0);
its energy follows ``e_t = e_{t-1} + (eta_c * ch_t - dis_t / eta_d) * dt`` with ``eta_c = eta_d =
sqrt(round-trip efficiency)``. The grid import is ``net_t - dis_t + ch_t`` (kW, import positive).
Objectives: the peak import (min-max through an auxiliary variable), or the energy cost for a
price series. A tiny cost on throughput breaks ties towards leaving the battery idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog
from scipy.sparse import coo_array, csr_array, hstack, vstack

from derim.control.schedules import MAX_ENTRIES, ScheduleEntry, ScheduleRequest
from derim.errors import TwinError
from derim.models.command import CommandType
from derim.twin.scenario import MAX_DISPATCH_STEPS, BatteryParams, Objective

THROUGHPUT_COST = 1e-6
"""Objective weight per kWh charged or discharged: breaks ties without moving the optimum."""
Floats = npt.NDArray[np.float64]
Bounds = list[tuple[float, float | None]]
_Lp = tuple[Floats, csr_array | None, Floats | None, csr_array, Floats, Bounds]
"""A linear programme for ``linprog``: c, A_ub, b_ub, A_eq, b_eq, bounds."""


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """An optimised schedule: power per step (kW, + discharge, - charge), state of charge at the
    end of each step (0-1) and the objective reached (peak import kW, or cost in currency)."""

    power_kw: Floats
    soc: Floats
    objective: float


def optimise_battery(
    net_load_kw: npt.ArrayLike,
    step_h: float,
    battery: BatteryParams,
    *,
    objective: Objective = Objective.PEAK,
    price: npt.ArrayLike | None = None,
    export_price: npt.ArrayLike = 0.0,
    max_import_kw: npt.ArrayLike | None = None,
    final_soc_at_least_initial: bool = False,
) -> DispatchResult:
    """Schedule ``battery`` against the site's ``net_load_kw`` (import positive) on steps of
    ``step_h`` hours to minimise the peak import or, with ``price`` (currency/kWh per step), the
    energy cost, exports earning ``export_price``. ``max_import_kw`` (scalar or per step) caps the
    import. Raises ``TwinError`` for bad inputs or when no schedule meets the constraints."""
    net = _series(net_load_kw, "net_load_kw")
    n = net.size
    if not 0 < n <= MAX_DISPATCH_STEPS:
        raise TwinError(f"net_load_kw needs 1 to {MAX_DISPATCH_STEPS} steps, got {n}")
    if not (math.isfinite(step_h) and 0 < step_h <= 24):
        raise TwinError(f"step_h must be a number of hours in (0, 24], got {step_h}")
    caps = None if max_import_kw is None else _series(max_import_kw, "max_import_kw", n)
    model = _Model(net, step_h, battery, final_soc_at_least_initial)
    if objective == Objective.PEAK:
        power, soc = model.solve(*model.peak(caps))
        return DispatchResult(power, soc, max(0.0, float((net - power).max())))
    if price is None:
        raise TwinError("the cost objective needs a price series")
    buy = _series(price, "price", n)
    sell = _series(export_price, "export_price", n)
    if np.any(sell > buy):
        step = int(np.argmax(sell > buy))
        raise TwinError(f"export_price exceeds price at step {step}: the LP would be unbounded")
    power, soc = model.solve(*model.cost(buy, sell, caps))
    grid = net - power
    return DispatchResult(power, soc, float(np.sum(np.where(grid > 0, buy, sell) * grid) * step_h))


class _Model:
    """The LP's variables ``[ch_0..ch_n-1, dis_0.., e_0.., extra...]`` and shared constraints."""

    def __init__(self, net: Floats, step_h: float, battery: BatteryParams, hold: bool) -> None:
        self.net, self.dt, self.battery = net, step_h, battery
        self.n = net.size
        eta = battery.one_way_efficiency
        self.charge_gain, self.discharge_cost = eta * step_h, step_h / eta
        self.e0 = battery.initial_soc * battery.capacity_kwh
        e_min = battery.min_soc * battery.capacity_kwh
        e_max = battery.max_soc * battery.capacity_kwh
        power = (0.0, battery.power_kw)
        energy = [(e_min, e_max)] * self.n
        if hold:
            energy[-1] = (max(e_min, self.e0), e_max)
        self.bounds = [power] * (2 * self.n) + energy

    def dynamics(self, extra: int) -> tuple[csr_array, Floats]:
        """Energy balance rows ``e_t - e_{t-1} - eta_c dt ch_t + dt/eta_d dis_t = 0``."""
        n = self.n
        eye = _identity(n)
        shift = coo_array((-np.ones(n - 1), (np.arange(1, n), np.arange(n - 1))), shape=(n, n))
        rows = hstack(
            [-self.charge_gain * eye, self.discharge_cost * eye, eye + shift, _zeros(n, extra)]
        )
        rhs = np.zeros(n)
        rhs[0] = self.e0
        return csr_array(rows), rhs

    def peak(self, caps: Floats | None) -> _Lp:
        """Minimise ``z`` with ``net_t + ch_t - dis_t <= z`` (and ``<= cap_t``), ``z >= 0``."""
        n = self.n
        eye = _identity(n)
        rows = [hstack([eye, -eye, _zeros(n, n), -np.ones((n, 1))])]
        rhs = [-self.net]
        if caps is not None:
            rows.append(hstack([eye, -eye, _zeros(n, n + 1)]))
            rhs.append(caps - self.net)
        c = np.concatenate([np.full(2 * n, THROUGHPUT_COST * self.dt), np.zeros(n), [1.0]])
        bounds: Bounds = [*self.bounds, (0.0, None)]
        a_eq, b_eq = self.dynamics(extra=1)
        return c, csr_array(vstack(rows)), np.concatenate(rhs), a_eq, b_eq, bounds

    def cost(self, buy: Floats, sell: Floats, caps: Floats | None) -> _Lp:
        """Minimise ``sum(buy imp - sell exp) dt`` with ``imp - exp = net + ch - dis``."""
        n = self.n
        eye = _identity(n)
        a_dyn, b_dyn = self.dynamics(extra=2 * n)
        balance = hstack([-eye, eye, _zeros(n, n), eye, -eye])
        c = np.concatenate(
            [np.full(2 * n, THROUGHPUT_COST * self.dt), np.zeros(n), buy * self.dt, -sell * self.dt]
        )
        imports = [(0.0, None)] * n if caps is None else [(0.0, float(cap)) for cap in caps]
        bounds: Bounds = [*self.bounds, *imports, *[(0.0, None)] * n]
        a_eq = csr_array(vstack([a_dyn, balance]))
        return c, None, None, a_eq, np.concatenate([b_dyn, self.net]), bounds

    def solve(
        self,
        c: Floats,
        a_ub: csr_array | None,
        b_ub: Floats | None,
        a_eq: csr_array,
        b_eq: Floats,
        bounds: Bounds,
    ) -> tuple[Floats, Floats]:
        """Battery power (kW, + discharge) and end-of-step state of charge (0-1) at the optimum."""
        result = linprog(
            c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs"
        )
        if result.status == 2:
            raise TwinError(
                "no battery schedule meets the constraints: the import cap cannot be kept "
                "with this battery (or its final state of charge cannot be restored)"
            )
        if not result.success:
            raise TwinError(f"battery optimisation failed: {result.message}")
        x = np.asarray(result.x, dtype=float)
        n = self.n
        soc = np.clip(x[2 * n : 3 * n] / self.battery.capacity_kwh, 0.0, 1.0)
        return x[n : 2 * n] - x[:n], soc


def to_schedule_request(
    device_id: str,
    start: datetime,
    step: timedelta,
    power_kw: npt.ArrayLike,
    *,
    resolution_kw: float = 0.001,
    name: str = "twin dispatch",
) -> ScheduleRequest:
    """A control schedule carrying out ``power_kw`` (+ discharge, - charge per ``step`` from
    ``start``): one ``set_active_power`` entry per change of setpoint (rounded to
    ``resolution_kw``), then 0 kW when the schedule ends."""
    power = _series(power_kw, "power_kw")
    if power.size == 0 or step <= timedelta(0) or resolution_kw <= 0:
        raise TwinError("a schedule needs setpoints, a positive step and a positive resolution")
    setpoints = np.round(np.round(power / resolution_kw) * resolution_kw, 9)
    changes = [i for i in range(power.size) if i == 0 or setpoints[i] != setpoints[i - 1]]
    entries = [_entry(start + i * step, float(setpoints[i])) for i in changes]
    if setpoints[-1] != 0:
        entries.append(_entry(start + power.size * step, 0.0))
    if len(entries) > MAX_ENTRIES:
        raise TwinError(
            f"the schedule changes setpoint {len(entries)} times, more than the control layer's "
            f"{MAX_ENTRIES}; use a coarser resolution_kw or a shorter horizon"
        )
    return ScheduleRequest(device_id=device_id, name=name, entries=entries)


def _entry(at: datetime, power_kw: float) -> ScheduleEntry:
    """A battery setpoint (kW, discharge positive) at ``at``."""
    value = power_kw or 0.0  # no -0.0 in the schedule
    return ScheduleEntry(at=at, command=CommandType.SET_ACTIVE_POWER, value=value)


def _series(values: npt.ArrayLike, name: str, length: int | None = None) -> Floats:
    """``values`` as a finite float vector (a scalar broadcast to ``length``)."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TwinError(f"{name} must be numbers") from exc
    if length is not None and array.ndim == 0:
        array = np.full(length, float(array))
    if array.ndim != 1 or (length is not None and array.size != length):
        raise TwinError(f"{name} must be a list of {length or 'some'} numbers")
    if not np.all(np.isfinite(array)):
        raise TwinError(f"{name} holds a value that is not a finite number")
    return array


def _identity(n: int) -> coo_array:
    """The sparse n x n identity."""
    index = np.arange(n)
    return coo_array((np.ones(n), (index, index)), shape=(n, n))


def _zeros(rows: int, columns: int) -> coo_array:
    """A sparse all-zero block."""
    return coo_array((rows, columns))
