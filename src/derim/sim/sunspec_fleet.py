"""A simulated site behind one Modbus TCP gateway: SunSpec PV inverter, SunSpec battery and meter.

Unit 1, the PV inverter, holds SunSpec models 1 (common), 103 (three-phase inverter), 120
(nameplate), 123 (immediate controls), 701 (DER AC measurement), 702 (DER capacity), 703 (enter
service) and 704 (DER AC controls); unit 2, the battery, holds models 1, 802 (battery) and 124
(storage controls); both maps start at the usual base 40000 and are encoded by pysunspec2. Unit 3
is the plain-Modbus site meter at the point of common coupling, laid out as the ``generic_meter``
profile (``derim.sim.meter``).

Every ``update`` (each ``step_s`` seconds while running) first keeps what clients wrote to the
devices' read-write points, then runs the energy counters and the battery's charge on over the
clock time since the previous update, then recomputes the site for the clock's current time:

* PV output is ``PvYear().fraction_at(now)`` of the rating (a real TMY year), capped by the tighter
  enabled power limit, 123 ``WMaxLimPct`` with ``WMaxLim_Ena`` or 704 ``WMaxLimPct`` with
  ``WMaxLimPctEna`` (percent of rating, each scaled by its own model's ``WMaxLimPct_SF``), and zero
  while 123 ``Conn`` is 0. An enabled power factor setpoint (704 ``PFWInj`` with ``PFWInjEna``,
  else 123 ``OutPFSet`` with ``OutPFSet_Ena``, positive meaning over-excited) sets the reactive
  power to W * tan(acos(PF)), positive over-excited (injecting), negative under-excited; the PF
  is held to the rated minimum ``MIN_PF``. Without a setpoint the inverter runs at unity PF.
* The battery (discharge positive) follows 124 ``StorCtl_Mod``: with the CHARGE or DISCHARGE bit
  set it charges at ``InWRte`` / discharges at ``OutWRte`` percent of ``WChaMax`` (both bits: the
  difference); with both clear it follows a daily schedule, charging at midday and discharging in
  the evening. It stops at empty and full.
* The meter reads PV + battery - household load (export positive), the load following a daily
  curve with morning and evening peaks at a lagging power factor of ``LOAD_PF``.

Times of day are the PV weather station's standard time (``PvYear.tz``), so the battery's midday
charge meets the PV peak.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from derim.sim.irradiance import PvYear
from derim.sim.meter import IMAGE_SIZE, MeterValues, meter_image
from derim.sim.server import SimServer, SimUnit
from derim.sim.sunspec_map import ModelValues, SunSpecMap
from derim.tasks import cancel_and_wait

BASE = 40000
PV_UNIT = 1
BATTERY_UNIT = 2
METER_UNIT = 3
GRID_V = 230.0
"""Line-to-neutral grid voltage (V) at the inverters."""
GRID_HZ = 50.0
MIN_PF = 0.8
"""Lowest power factor the inverter is rated for, either way (its VA rating is WRtg / MIN_PF)."""
LOAD_PF = 0.95
"""Power factor of the household load (lagging: it draws reactive power)."""
VOLTAGE_RISE_V_PER_KW = 0.25
"""Rise of the voltage at the meter per kW exported (a fall when importing)."""
ENABLED = 1
"""``*_Ena`` enum code for an enabled function (0 is disabled)."""
CONNECT = 1
"""Model 123 ``Conn`` code for connected (0 is disconnected)."""
OVER_EXCITED = 0
"""Model 704 ``PFWInj.Ext`` code for over-excited (1 is under-excited)."""
STOR_CHARGE, STOR_DISCHARGE = 1, 2
"""Model 124 ``StorCtl_Mod`` bits."""
ST_SLEEPING, ST_MPPT, ST_THROTTLED, ST_STANDBY = 2, 4, 5, 8
"""Inverter model 103 ``St`` codes."""
INV_SLEEPING, INV_RUNNING, INV_THROTTLED, INV_STANDBY = 1, 3, 4, 7
"""DER model 701 ``InvSt`` codes."""
CHA_EMPTY, CHA_DISCHARGING, CHA_CHARGING, CHA_FULL, CHA_HOLDING = 2, 3, 4, 5, 6
"""Battery model 802 and storage model 124 ``ChaSt`` codes."""
BATTERY_V_EMPTY, BATTERY_V_FULL = 360.0, 400.0
"""Battery terminal voltage (V) at 0 and 100 % state of charge (linear between)."""
DER_TYPE_PV, THREE_PHASE, GRID_FOLLOWING = 4, 2, 1
"""Model 120 ``DERTyp`` code, model 701 ``ACType`` code and ``DERMode`` bits of the inverter."""
CONTROL_MODES = 1 << 0 | 1 << 3
"""Model 702 ``CtrlModes`` bits of the functions the inverter honours: MAX_W and FIXED_PF."""


@dataclass
class BatteryState:
    """The simulated battery's energy content (kWh) and power (kW, discharge positive)."""

    capacity_kwh: float = 13.5
    energy_kwh: float = 6.75
    power_kw: float = 0.0


@dataclass
class SiteState:
    """PV output (W, var) and household load (W) as last published, and the counters (Wh)."""

    pv_w: int = 0
    pv_var: int = 0
    load_w: int = 0
    pv_energy_wh: float = 1_000_000.0
    import_wh: float = 4_500_000.0
    export_wh: float = 1_200_000.0


def household_load_w(hour: float) -> float:
    """Household demand (W) at ``hour`` of the local day: a base load, morning and evening peaks."""
    morning = 1500 * math.exp(-((hour - 7.5) ** 2) / 2)
    evening = 2500 * math.exp(-((hour - 19) ** 2) / 4)
    return 400 + morning + evening


class SunSpecFleetSim:
    """Serves the PV inverter, battery and site meter and keeps their registers moving."""

    def __init__(
        self,
        *,
        pv_rating_w: int = 8000,
        battery_rating_w: int = 5000,
        step_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """A site whose inverter and battery have these ratings (W, up to 20 kW: the maps use
        scale factor 0 for W), updated every ``step_s`` seconds at the times ``clock`` gives."""
        self.pv_rating_w = pv_rating_w
        self.battery_rating_w = battery_rating_w
        self.step_s = step_s
        self.clock = clock
        self.pv_year = PvYear()
        self.battery = BatteryState()
        self.site = SiteState()
        self.pv = SunSpecMap(BASE, self._pv_models())
        self.storage = SunSpecMap(BASE, self._battery_models())
        self.pv_unit = SimUnit(PV_UNIT, BASE + self.pv.size)
        self.battery_unit = SimUnit(BATTERY_UNIT, BASE + self.storage.size)
        self.meter_unit = SimUnit(METER_UNIT, IMAGE_SIZE)
        self.server = SimServer([self.pv_unit, self.battery_unit, self.meter_unit])
        self._last: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The gateway's TCP port on 127.0.0.1."""
        return self.server.port

    @property
    def grid_w(self) -> int:
        """Power at the point of common coupling (W, export positive) as last published."""
        site = self.site
        return site.pv_w + round(self.battery.power_kw * 1000) - site.load_w

    async def start(self) -> SunSpecFleetSim:
        """Fill the registers, start serving and start the update loop."""
        self.update()
        await self.server.start()
        self._task = asyncio.create_task(self._run(), name="derim-sim-sunspec")
        return self

    async def stop(self) -> None:
        """Stop updating and serving."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.server.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self.update()

    def update(self) -> None:
        """Take control writes, advance to the clock's time and publish all three devices."""
        moment = self.clock()
        hours = 0.0 if self._last is None else (moment - self._last).total_seconds() / 3600
        self._last = moment
        for unit, device in ((self.pv_unit, self.pv), (self.battery_unit, self.storage)):
            if unit.registers is not None:
                device.take_writes(unit.registers)
        self._advance(max(0.0, hours))
        local = moment.astimezone(self.pv_year.tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        self._step_pv(self.pv_year.fraction_at(moment))
        self._step_battery(hour)
        self.site.load_w = round(household_load_w(hour))
        self.pv_unit.set(BASE, self.pv.registers())
        self.battery_unit.set(BASE, self.storage.registers())
        self.meter_unit.set(0, meter_image(self._meter_values()))

    def _advance(self, hours: float) -> None:
        """Run the battery's energy and the counters on over ``hours`` at the published powers."""
        state = self.battery
        state.energy_kwh = min(
            state.capacity_kwh, max(0.0, state.energy_kwh - state.power_kw * hours)
        )
        site = self.site
        grid = self.grid_w
        site.pv_energy_wh += site.pv_w * hours
        site.export_wh += max(0, grid) * hours
        site.import_wh += max(0, -grid) * hours

    def _step_pv(self, fraction: float) -> None:
        """Set the inverter's output, the sun giving ``fraction`` of rating, under its controls."""
        immediate, ac_controls = self.pv.values[123], self.pv.values[704]
        available = self.pv_rating_w * fraction
        limits = [100.0]
        if immediate["WMaxLim_Ena"] == ENABLED:
            limits.append(immediate["WMaxLimPct"] * 10.0 ** immediate["WMaxLimPct_SF"])
        if ac_controls["WMaxLimPctEna"] == ENABLED:
            limits.append(ac_controls["WMaxLimPct"] * 10.0 ** ac_controls["WMaxLimPct_SF"])
        cap = self.pv_rating_w * max(0.0, min(limits)) / 100
        connected = immediate["Conn"] == CONNECT
        watts = round(min(available, cap)) if connected else 0
        pf = self._power_factor()
        var = round(math.copysign(watts * math.tan(math.acos(abs(pf))), pf))
        if not connected:
            state, inverter_state = ST_STANDBY, INV_STANDBY
        elif available <= 0:
            state, inverter_state = ST_SLEEPING, INV_SLEEPING
        elif cap < available:
            state, inverter_state = ST_THROTTLED, INV_THROTTLED
        else:
            state, inverter_state = ST_MPPT, INV_RUNNING
        apparent = math.hypot(watts, var)
        phase_amps = apparent / 3 / GRID_V
        self.site.pv_w, self.site.pv_var = watts, var
        energy = round(self.site.pv_energy_wh)
        self.pv.values[103].update(
            {
                "A": round(300 * phase_amps), "AphA": round(100 * phase_amps),
                "AphB": round(100 * phase_amps), "AphC": round(100 * phase_amps), "W": watts,
                "VA": round(apparent), "VAr": var, "PF": round(1000 * pf), "WH": energy % 2**32,
                "DCW": round(watts * 1.03), "St": state,
            }
        )  # fmt: skip
        phases = {
            f"{name}{phase}": value
            for phase in ("L1", "L2", "L3")
            for name, value in (
                ("W", round(watts / 3)),
                ("VA", round(apparent / 3)),
                ("Var", round(var / 3)),
                ("A", round(100 * phase_amps)),
            )
        }
        self.pv.values[701].update(
            {
                "St": int(inverter_state in (INV_RUNNING, INV_THROTTLED)), "InvSt": inverter_state,
                "ConnSt": int(connected), "W": watts, "VA": round(apparent), "Var": var,
                "PF": round(1000 * pf), "A": round(300 * phase_amps), "TotWhInj": energy, **phases,
            }
        )  # fmt: skip

    def _power_factor(self) -> float:
        """The power factor setpoint in force, signed + over-excited; 1.0 when none is enabled."""
        immediate, ac_controls = self.pv.values[123], self.pv.values[704]
        if ac_controls["PFWInjEna"] == ENABLED:
            setpoint = ac_controls["PFWInj"]
            pf = setpoint["PF"] * 10.0 ** ac_controls["PF_SF"]
            if setpoint["Ext"] != OVER_EXCITED:
                pf = -pf
        elif immediate["OutPFSet_Ena"] == ENABLED:
            pf = immediate["OutPFSet"] * 10.0 ** immediate["OutPFSet_SF"]
        else:
            return 1.0
        return math.copysign(min(1.0, max(MIN_PF, abs(pf))), pf)

    def _step_battery(self, hour: float) -> None:
        """Set the battery's power at ``hour`` of the local day, commanded or scheduled."""
        storage = self.storage.values[124]
        mode = storage["StorCtl_Mod"]
        rating = self.battery_rating_w
        if mode & (STOR_CHARGE | STOR_DISCHARGE):
            most = min(rating, storage["WChaMax"] * 10.0 ** storage["WChaMax_SF"])
            step = 10.0 ** storage["InOutWRte_SF"]
            discharge = _share(storage["OutWRte"] * step) if mode & STOR_DISCHARGE else 0.0
            charge = _share(storage["InWRte"] * step) if mode & STOR_CHARGE else 0.0
            power_w = most * (discharge - charge)
        elif 10 <= hour < 15:
            power_w = -0.6 * rating
        elif 17 <= hour < 22:
            power_w = 0.5 * rating
        else:
            power_w = 0.0
        state = self.battery
        full = state.energy_kwh >= state.capacity_kwh and power_w < 0
        empty = state.energy_kwh <= 0 and power_w > 0
        state.power_kw = 0.0 if full or empty else power_w / 1000
        soc = 100 * state.energy_kwh / state.capacity_kwh
        watts = round(state.power_kw * 1000)
        if watts:
            charge_state = CHA_DISCHARGING if watts > 0 else CHA_CHARGING
        else:
            charge_state = CHA_FULL if soc >= 100 else CHA_EMPTY if soc <= 0 else CHA_HOLDING
        volts = BATTERY_V_EMPTY + (BATTERY_V_FULL - BATTERY_V_EMPTY) * soc / 100
        self.storage.values[802].update({"SoC": round(soc), "W": watts, "ChaSt": charge_state})
        storage.update(
            {
                "ChaState": round(10 * soc),
                "StorAval": round(100 * state.energy_kwh * 1000 / volts),
                "InBatV": round(10 * volts),
                "ChaSt": charge_state,
            }
        )

    def _meter_values(self) -> MeterValues:
        """The site meter's reading of the power last published."""
        site = self.site
        grid = self.grid_w
        grid_var = site.pv_var - site.load_w * math.tan(math.acos(LOAD_PF))
        apparent = math.hypot(grid, grid_var)
        volts = GRID_V + VOLTAGE_RISE_V_PER_KW * grid / 1000
        return MeterValues(
            power_kw=grid / 1000,
            reactive_power_kvar=grid_var / 1000,
            voltage_v=volts,
            current_a=apparent / 3 / volts,
            frequency_hz=GRID_HZ,
            power_factor=grid / apparent if apparent else 1.0,
            energy_import_kwh=site.import_wh / 1000,
            energy_export_kwh=site.export_wh / 1000,
            serial_number="SITE-METER-0001",
        )

    def _pv_models(self) -> list[tuple[int, ModelValues]]:
        """The inverter's models with their fixed values and control defaults (raw)."""
        rating = self.pv_rating_w
        va_rating = round(rating / MIN_PF)
        var_rating = round(va_rating * math.sin(math.acos(MIN_PF)))
        amps_rating = round(10 * va_rating / 3 / GRID_V)
        pf_rating = round(1000 * MIN_PF)
        volts, line_volts = round(10 * GRID_V), round(10 * GRID_V * math.sqrt(3))
        common = {"Mn": "DERIM", "Md": "SIM-PV", "SN": "PV-0001", "Vr": "2.0", "DA": PV_UNIT}
        inverter = {
            "A_SF": -2, "PPVphAB": line_volts, "PPVphBC": line_volts, "PPVphCA": line_volts,
            "PhVphA": volts, "PhVphB": volts + 1, "PhVphC": volts - 1, "V_SF": -1, "W_SF": 0,
            "Hz": round(100 * GRID_HZ), "Hz_SF": -2, "VA_SF": 0, "VAr_SF": 0, "PF_SF": -3,
            "WH_SF": 0, "DCW_SF": 0, "TmpCab": 350, "Tmp_SF": -1,
        }  # fmt: skip
        nameplate = {
            "DERTyp": DER_TYPE_PV, "WRtg": rating, "WRtg_SF": 0, "VARtg": va_rating, "VARtg_SF": 0,
            "VArRtgQ1": var_rating, "VArRtgQ4": -var_rating, "VArRtg_SF": 0, "ARtg": amps_rating,
            "ARtg_SF": -1, "PFRtgQ1": pf_rating, "PFRtgQ4": -pf_rating, "PFRtg_SF": -3,
        }  # fmt: skip
        immediate = {
            "Conn": CONNECT, "WMaxLimPct": 100, "WMaxLim_Ena": 0, "OutPFSet": 1000,
            "OutPFSet_Ena": 0, "WMaxLimPct_SF": 0, "OutPFSet_SF": -3,
        }  # fmt: skip
        measurement = {
            "ACType": THREE_PHASE, "Alrm": 0, "DERMode": GRID_FOLLOWING, "LLV": line_volts,
            "LNV": volts, "VL1L2": line_volts, "VL2L3": line_volts, "VL3L1": line_volts,
            "VL1": volts, "VL2": volts, "VL3": volts, "Hz": round(1000 * GRID_HZ), "TotWhAbs": 0,
            "TmpCab": 350, "A_SF": -2, "V_SF": -1, "Hz_SF": -3, "W_SF": 0, "PF_SF": -3,
            "VA_SF": 0, "Var_SF": 0, "TotWh_SF": 0, "Tmp_SF": -1,
        }  # fmt: skip
        capacity = {
            "WMaxRtg": rating, "WOvrExtRtg": rating, "WOvrExtRtgPF": pf_rating,
            "WUndExtRtg": rating, "WUndExtRtgPF": pf_rating, "VAMaxRtg": va_rating,
            "VarMaxInjRtg": var_rating, "VarMaxAbsRtg": var_rating, "VNomRtg": volts,
            "VMaxRtg": round(1.1 * volts), "VMinRtg": round(0.9 * volts), "AMaxRtg": amps_rating,
            "PFOvrExtRtg": pf_rating, "PFUndExtRtg": pf_rating, "NorOpCatRtg": 1,
            "AbnOpCatRtg": 2, "CtrlModes": CONTROL_MODES, "IntIslandCatRtg": 1, "WMax": rating,
            "WMaxOvrExt": rating, "WOvrExtPF": pf_rating, "WMaxUndExt": rating,
            "WUndExtPF": pf_rating, "VAMax": va_rating, "VarMaxInj": var_rating,
            "VarMaxAbs": var_rating, "VNom": volts, "VMax": round(1.1 * volts),
            "VMin": round(0.9 * volts), "AMax": amps_rating, "PFOvrExt": pf_rating,
            "PFUndExt": pf_rating, "IntIslandCat": 1, "W_SF": 0, "PF_SF": -3, "VA_SF": 0,
            "Var_SF": 0, "V_SF": -1, "A_SF": -1,
        }  # fmt: skip
        enter_service = {
            "ES": ENABLED, "ESVHi": 1050, "ESVLo": 917, "ESHzHi": round(1000 * GRID_HZ + 100),
            "ESHzLo": round(1000 * GRID_HZ - 500), "ESDlyTms": 300, "ESRndTms": 0,
            "ESRmpTms": 300, "ESDlyRemTms": 0, "V_SF": -1, "Hz_SF": -3,
        }  # fmt: skip
        ac_controls = {
            "PFWInjEna": 0, "PFWInj": {"PF": 1000, "Ext": OVER_EXCITED}, "WMaxLimPctEna": 0,
            "WMaxLimPct": 1000, "PF_SF": -3, "WMaxLimPct_SF": -1,
        }  # fmt: skip
        return [
            (1, common),
            (103, inverter),
            (120, nameplate),
            (123, immediate),
            (701, measurement),
            (702, capacity),
            (703, enter_service),
            (704, ac_controls),
        ]

    def _battery_models(self) -> list[tuple[int, ModelValues]]:
        """The battery's models with their fixed values and control defaults (raw)."""
        rating = self.battery_rating_w
        common = {"Mn": "DERIM", "Md": "SIM-BAT", "SN": "BAT-0001", "Vr": "2.0", "DA": BATTERY_UNIT}
        battery = {
            "SoC_SF": 0, "SoH": 98, "SoH_SF": 0, "W_SF": 0, "WChaRteMax": math.floor(rating / 100),
            "WDisChaRteMax": math.floor(rating / 100), "WChaDisChaMax_SF": 2,
            "WHRtg": round(self.battery.capacity_kwh * 10), "WHRtg_SF": 2, "NCyc": 120, "Typ": 4,
        }  # fmt: skip
        storage = {
            "WChaMax": rating, "StorCtl_Mod": 0, "OutWRte": 10000, "InWRte": 10000,
            "WChaMax_SF": 0, "ChaState_SF": -1, "StorAval_SF": -2, "InBatV_SF": -1,
            "InOutWRte_SF": -2,
        }  # fmt: skip
        return [(1, common), (802, battery), (124, storage)]


def _share(percent: float) -> float:
    """``percent`` (held to 0-100) as a fraction."""
    return min(100.0, max(0.0, percent)) / 100
