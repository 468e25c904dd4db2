"""A PV array's AC output over a typical meteorological year, for the simulated inverter.

The weather is the TMY3 file that pvlib ships (Greensboro, NC: ``pvlib/data/723170TYA.CSV``), read
from the installed package, never downloaded. pvlib turns it into AC output once, PVWatts-style:
solar position, Perez plane-of-array irradiance on a fixed south-facing array (30° tilt), AR-glass
incidence-angle loss on the beam, SAPM open-rack cell temperature, PVWatts DC (-0.37 %/°C) less
PVWatts' default 14 % system losses, and the PVWatts inverter with a DC/AC ratio of 1.2, which
clips at the AC nameplate.

Time: TMY3 timestamps are local standard time (UTC-5 here, no daylight saving) and label the hour
they end, so each hourly value is placed at the middle of its hour (hh:30 local standard time) both
for the solar position and for the interpolation in :meth:`PvYear.fraction_at`.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_TMY_FILE = "723170TYA.CSV"
_TILT_DEG = 30.0
_AZIMUTH_DEG = 180.0
_GAMMA_PDC = -0.0037
"""DC power temperature coefficient (1/°C)."""
_DC_AC_RATIO = 1.2
_ETA_INV_NOM = 0.96
_YEAR = 2001
"""Any non-leap year: the TMY months are stitched from different years."""


@dataclass(frozen=True)
class _TmyOutput:
    name: str
    tz: timezone
    fractions: tuple[float, ...]
    """AC output / AC nameplate (0 to 1) for each hour of the year, taken at its middle."""


@functools.cache
def _load() -> _TmyOutput:
    """Run the model over the bundled TMY year; imports pvlib here as it takes about a second."""
    from pvlib import atmosphere, iam, inverter, iotools, irradiance, pvsystem, solarposition
    from pvlib.temperature import TEMPERATURE_MODEL_PARAMETERS, sapm_cell

    path = importlib.resources.files("pvlib") / "data" / _TMY_FILE
    with importlib.resources.as_file(path) as csv:
        weather, meta = iotools.read_tmy3(csv, coerce_year=_YEAR, map_variables=True)
    weather.index -= timedelta(minutes=30)  # hour-ending labels to mid-hour
    times = weather.index
    sun = solarposition.get_solarposition(
        times,
        meta["latitude"],
        meta["longitude"],
        altitude=meta["altitude"],
        pressure=weather["pressure"] * 100,  # mbar to Pa
        temperature=weather["temp_air"],
    )
    poa = irradiance.get_total_irradiance(
        _TILT_DEG,
        _AZIMUTH_DEG,
        sun["apparent_zenith"],
        sun["azimuth"],
        weather["dni"],
        weather["ghi"],
        weather["dhi"],
        dni_extra=irradiance.get_extra_radiation(times),
        airmass=atmosphere.get_relative_airmass(sun["apparent_zenith"]),
        model="perez",
    )
    aoi = irradiance.aoi(_TILT_DEG, _AZIMUTH_DEG, sun["apparent_zenith"], sun["azimuth"])
    effective = poa["poa_direct"] * iam.physical(aoi) + poa["poa_diffuse"]
    cell = sapm_cell(
        poa["poa_global"],
        weather["temp_air"],
        weather["wind_speed"],
        **TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"],
    )
    dc = pvsystem.pvwatts_dc(effective, cell, _DC_AC_RATIO, _GAMMA_PDC)
    dc *= 1 - pvsystem.pvwatts_losses() / 100
    ac = inverter.pvwatts(dc, 1 / _ETA_INV_NOM, eta_inv_nom=_ETA_INV_NOM)
    return _TmyOutput(
        name=meta["Name"].strip('"') + ", " + meta["State"],
        tz=timezone(timedelta(hours=meta["TZ"])),
        # Perez gives NaN for the few hours with the sun up but no light in the data (DHI 0).
        fractions=tuple(float(f) for f in ac.fillna(0.0).clip(0.0, 1.0)),
    )


class PvYear:
    """AC output of the fixed array as a fraction of its AC nameplate, over the TMY year."""

    def __init__(self) -> None:
        self._tmy = _load()

    @property
    def location(self) -> str:
        """The TMY station, e.g. ``GREENSBORO PIEDMONT TRIAD INT, NC``."""
        return self._tmy.name

    @property
    def tz(self) -> timezone:
        """The station's standard time (no daylight saving), which ``fraction_at`` works in."""
        return self._tmy.tz

    def fraction_at(self, moment: datetime) -> float:
        """AC output / nameplate (0 to 1) at an aware ``moment``, on its TMY month, day and time.

        The moment is taken to the station's standard time; Feb 29 counts as Feb 28. Values
        between the hourly samples (at hh:30) are linear; night is 0.
        """
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        local = moment.astimezone(self._tmy.tz).replace(tzinfo=None)
        if (local.month, local.day) == (2, 29):
            local = local.replace(day=28)
        hours = (local.replace(year=_YEAR) - datetime(_YEAR, 1, 1)).total_seconds() / 3600 - 0.5
        index = math.floor(hours)
        weight = hours - index
        values = self._tmy.fractions
        before, after = values[index % len(values)], values[(index + 1) % len(values)]
        return before + weight * (after - before)
