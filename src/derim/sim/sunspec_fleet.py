"""A simulated SunSpec PV inverter and battery behind one Modbus TCP gateway (units 1 and 2).

Their register maps are built from pysunspec2's model definitions (common model 1, inverter
model 103 and immediate controls 123 for the PV inverter, battery model 802 for the battery) at the
usual base 40000, and refreshed every ``step_s`` seconds: PV output follows the demo's
clear-sky-like daylight curve, capped by a power limit written to model 123 (``WMaxLimPct`` with
``WMaxLim_Ena``) and zero while disconnected (``Conn``); the battery charges around midday and
discharges in the evening, its state of charge integrating its power.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from derim.adapters.sunspec import controls
from derim.adapters.sunspec.discovery import walk_models
from derim.adapters.sunspec.image import build_image
from derim.demo import solar_fraction
from derim.sim.server import SimServer, SimUnit

BASE = 40000
PV_UNIT = 1
BATTERY_UNIT = 2
ST_SLEEPING, ST_MPPT = 2, 4
"""Inverter model 103 ``St`` codes."""
CHA_DISCHARGING, CHA_CHARGING, CHA_HOLDING = 3, 4, 6
"""Battery model 802 ``ChaSt`` codes."""


@dataclass
class BatteryState:
    """The simulated battery's energy content (kWh) and power (kW, discharge positive)."""

    capacity_kwh: float = 13.5
    energy_kwh: float = 6.75
    power_kw: float = 0.0


class SunSpecFleetSim:
    """Serves the PV inverter and battery and keeps their registers moving."""

    def __init__(
        self,
        *,
        pv_rating_w: int = 8000,
        battery_rating_w: int = 5000,
        step_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pv_rating_w = pv_rating_w
        self.battery_rating_w = battery_rating_w
        self.step_s = step_s
        self.clock = clock
        self.battery = BatteryState()
        self.pv_unit = SimUnit(PV_UNIT, BASE + 200)
        self.battery_unit = SimUnit(BATTERY_UNIT, BASE + 200)
        self.server = SimServer([self.pv_unit, self.battery_unit])
        self.pv_controls = {"Conn": 1, "WMaxLimPct": 100, "WMaxLimPct_SF": 0, "WMaxLim_Ena": 0}
        """Model 123 as the inverter holds it (raw values); control writes land here."""
        layout = {BASE + i: r for i, r in enumerate(self._pv_image(0))}
        self._controls_at = next(
            m.address for m in walk_models(layout, BASE) if m.model_id == controls.CONTROLS_MODEL
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The gateway's TCP port on 127.0.0.1."""
        return self.server.port

    async def start(self) -> SunSpecFleetSim:
        """Fill the registers, start serving and start the update loop."""
        self.update()
        await self.server.start()
        self._task = asyncio.create_task(self._run(), name="derim-sim-sunspec")
        return self

    async def stop(self) -> None:
        """Stop updating and serving."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self.update()

    def update(self) -> None:
        """Recompute both devices for the clock's current time and publish their registers."""
        moment = self.clock()
        self._take_control_writes()
        available = self.pv_rating_w * 0.85 * solar_fraction(moment)
        if self.pv_controls["WMaxLim_Ena"] == 1:
            percent = self.pv_controls["WMaxLimPct"] * 10 ** self.pv_controls["WMaxLimPct_SF"]
            available = min(available, self.pv_rating_w * percent / 100)
        pv_w = round(available) if self.pv_controls["Conn"] == 1 else 0
        self.pv_unit.set(BASE, self._pv_image(pv_w))
        self._step_battery(moment)
        self.battery_unit.set(BASE, self._battery_image())

    def _take_control_writes(self) -> None:
        """Keep what a client wrote into model 123 since the last update."""
        live = self.pv_unit.registers
        if live is None:
            return
        for name in ("Conn", "WMaxLimPct", "WMaxLim_Ena"):
            self.pv_controls[name] = live[self._controls_at + controls.point_offset(name)]

    def _pv_image(self, power_w: int) -> list[int]:
        phase_a = round(power_w / 3 / 230 * 100)
        inverter = {
            "W": power_w, "W_SF": 0, "A": phase_a * 3, "AphA": phase_a, "AphB": phase_a,
            "AphC": phase_a, "A_SF": -2, "PhVphA": 2300, "PhVphB": 2301, "PhVphC": 2299,
            "V_SF": -1, "Hz": 5000, "Hz_SF": -2, "WH": 1_000_000, "WH_SF": 0,
            "DCW": round(power_w * 1.03), "DCW_SF": 0, "St": ST_MPPT if power_w else ST_SLEEPING,
        }  # fmt: skip
        common = {"Mn": "DERIM", "Md": "SIM-PV", "SN": "PV-0001", "Vr": "1.0", "DA": PV_UNIT}
        return build_image([(1, common), (103, inverter), (123, dict(self.pv_controls))])

    def _step_battery(self, moment: datetime) -> None:
        hour = moment.hour + moment.minute / 60
        rating_kw = self.battery_rating_w / 1000
        if 10 <= hour < 15:
            power = -0.6 * rating_kw
        elif 17 <= hour < 22:
            power = 0.5 * rating_kw
        else:
            power = 0.0
        state = self.battery
        hours = self.step_s / 3600
        state.energy_kwh = min(state.capacity_kwh, max(0.0, state.energy_kwh - power * hours))
        full = state.energy_kwh >= state.capacity_kwh and power < 0
        empty = state.energy_kwh <= 0 and power > 0
        state.power_kw = 0.0 if full or empty else power

    def _battery_image(self) -> list[int]:
        state = self.battery
        soc = round(100 * state.energy_kwh / state.capacity_kwh)
        power_w = round(state.power_kw * 1000)
        charge_state = (
            CHA_DISCHARGING if power_w > 0 else CHA_CHARGING if power_w < 0 else CHA_HOLDING
        )
        battery = {
            "SoC": soc, "SoC_SF": 0, "SoH": 98, "SoH_SF": 0, "W": power_w, "W_SF": 0,
            "ChaSt": charge_state, "WChaRteMax": math.floor(self.battery_rating_w / 100),
            "WChaDisChaMax_SF": 2, "WHRtg": round(state.capacity_kwh * 10), "WHRtg_SF": 2,
            "NCyc": 120, "Typ": 4,
        }  # fmt: skip
        common = {"Mn": "DERIM", "Md": "SIM-BAT", "SN": "BAT-0001", "Vr": "1.0", "DA": BATTERY_UNIT}
        return build_image([(1, common), (802, battery)])
