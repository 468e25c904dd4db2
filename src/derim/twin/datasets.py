"""Real data sets that installed packages ship, so tests and docs need no download.

- ``greensboro_pv``: a typical meteorological year (TMY3) of hourly measured irradiance and
  temperature at Greensboro, NC (shipped by pvlib), turned into the AC power (W) of a 5 kW
  south-facing PV system by pvlib's PVWatts models.
- ``simbench_load``: a year (2016) of 15-min household (H0) or commercial (G0) load from SimBench
  (ODbL; ships in the ``simbench`` package, a development dependency), in W for a peak of 5 kW.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

from derim.errors import TwinError
from derim.twin.features import Site

PV_CAPACITY_W = 5_000.0
"""DC rating of the simulated PV system (W); the inverter is rated 4.6 kW AC."""
LOAD_PEAK_W = 5_000.0
"""SimBench profiles are normalised to a peak of 1; they are scaled to this (W)."""


@dataclass(frozen=True)
class Dataset:
    """A named regular series (W, UTC index labelled by interval start) and where it is."""

    name: str
    series: pd.Series
    freq: pd.Timedelta
    site: Site | None
    source: str


def greensboro_pv(years: int = 1) -> Dataset:
    """Hourly AC power (W) of a 5 kW PV system under Greensboro's TMY3 weather, ``years`` long.

    A TMY is one year; with ``years`` > 1 it is repeated on consecutive calendar years.
    """
    path = Path(pvlib.__path__[0]) / "data" / "723170TYA.CSV"
    weather, meta = pvlib.iotools.read_tmy3(str(path), map_variables=True, coerce_year=2021)
    site = Site(float(meta["latitude"]), float(meta["longitude"]), float(meta["altitude"]))
    weather.index = weather.index.tz_convert("UTC") - pd.Timedelta(hours=1)
    power = _pvwatts_ac(weather, site)
    series = _repeat_years(power.sort_index(), years)
    source = "pvlib TMY3 723170 (Greensboro NC) irradiance, PVWatts 5 kW DC / 4.6 kW AC"
    return Dataset("greensboro_pv", series, pd.Timedelta(hours=1), site, source)


def _pvwatts_ac(weather: pd.DataFrame, site: Site) -> pd.Series:
    """AC power (W) of a south-facing array tilted at the latitude, from GHI/DNI/DHI (W/m²)."""
    middle = weather.index + pd.Timedelta(minutes=30)
    solar = pvlib.solarposition.ephemeris(middle, site.latitude, site.longitude)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=site.latitude,
        surface_azimuth=180.0,
        solar_zenith=solar["apparent_zenith"].to_numpy(),
        solar_azimuth=solar["azimuth"].to_numpy(),
        dni=weather["dni"].to_numpy(),
        ghi=weather["ghi"].to_numpy(),
        dhi=weather["dhi"].to_numpy(),
    )
    poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float))
    cell_c = pvlib.temperature.faiman(
        poa_global, weather["temp_air"].to_numpy(), weather["wind_speed"].to_numpy()
    )
    dc = pvlib.pvsystem.pvwatts_dc(poa_global, cell_c, PV_CAPACITY_W, -0.0037)
    ac = pvlib.inverter.pvwatts(dc, 0.92 * PV_CAPACITY_W)
    return pd.Series(
        np.clip(np.asarray(ac, dtype=float), 0.0, None), index=weather.index, name="ac_power_w"
    )


def _repeat_years(series: pd.Series, years: int) -> pd.Series:
    """``series`` (one year) repeated on consecutive years, on a regular index."""
    if years < 1:
        raise TwinError(f"years must be at least 1, not {years}")
    values = np.tile(series.to_numpy(), years)
    freq = series.index[1] - series.index[0]
    index = pd.date_range(series.index[0], periods=len(values), freq=freq)
    return pd.Series(values, index=index, name=series.name)


def simbench_load(profile: str = "H0-A") -> Dataset:
    """A year of 15-min active load (W) for a SimBench standard profile such as H0-A or G0-A."""
    spec = importlib.util.find_spec("simbench")
    if spec is None or spec.origin is None:
        raise TwinError("the simbench package is not installed (pip install 'derim[dev]')")
    path = (
        Path(spec.origin).parent / "networks" / "1-complete_data-mixed-all-0-sw" / "LoadProfile.csv"
    )
    column = f"{profile}_pload"
    try:
        frame = pd.read_csv(path, sep=";", usecols=["time", column])
    except ValueError as exc:
        raise TwinError(f"SimBench has no load profile {profile!r}") from exc
    local = pd.to_datetime(frame["time"], format="%d.%m.%Y %H:%M")
    # SimBench rows are one regular 15-min grid over 2016 (366 days) labelled in German local
    # time; the grid is rebuilt in UTC from its first label instead of following the DST jumps.
    start = pd.Timestamp(local.iloc[0]).tz_localize("Europe/Berlin").tz_convert("UTC")
    index = pd.date_range(start, periods=len(frame), freq="15min")
    series = pd.Series(frame[column].to_numpy(dtype=float) * LOAD_PEAK_W, index=index, name=column)
    source = f"SimBench 1-complete_data-mixed-all-0-sw LoadProfile {column} (2016, ODbL)"
    return Dataset(f"simbench_{profile}", series, pd.Timedelta(minutes=15), None, source)


def replay(series: pd.Series, end: pd.Timestamp, days: int, freq: str = "15min") -> pd.Series:
    """A one-year ``series`` laid onto the ``days`` days before ``end`` (UTC): each step takes
    the value of the same hour of the same day of the year, so a demo or test sees the season's
    real weather on today's dates."""
    index = pd.date_range(end - pd.Timedelta(days=days), end, freq=freq, inclusive="left")
    first_hour = series.index[0].hour
    hour_of_year = (index.dayofyear.to_numpy() - 1) % 365 * 24 + index.hour.to_numpy()
    values = series.to_numpy()[(hour_of_year - first_hour) % len(series)]
    return pd.Series(values, index=index, name=series.name)
