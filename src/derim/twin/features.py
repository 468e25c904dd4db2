"""Covariates for forecasters: calendar terms and solar geometry from the device's location."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pvlib

SOLAR_CONSTANT_W_M2 = 1098.0
"""Haurwitz clear-sky model's scale (W/m²)."""


@dataclass(frozen=True)
class Site:
    """Where a device is: latitude and longitude in degrees, altitude in metres."""

    latitude: float
    longitude: float
    altitude_m: float = 0.0


def clearsky_ghi(index: pd.DatetimeIndex, site: Site, freq: pd.Timedelta) -> pd.Series:
    """Clear-sky global horizontal irradiance (W/m²) at the middle of each interval."""
    cos_zenith = _cos_zenith(index, site, freq)
    with np.errstate(divide="ignore", over="ignore"):
        ghi = SOLAR_CONSTANT_W_M2 * cos_zenith * np.exp(-0.059 / cos_zenith)
    return pd.Series(np.where(cos_zenith > 0, ghi, 0.0), index=index, name="clearsky_ghi")


def _cos_zenith(index: pd.DatetimeIndex, site: Site, freq: pd.Timedelta) -> np.ndarray:
    """Cosine of the solar zenith angle at interval midpoints, 0 below the horizon."""
    middle = index + freq / 2
    position = pvlib.solarposition.ephemeris(middle, site.latitude, site.longitude)
    cos_zenith = np.cos(np.radians(np.asarray(position["apparent_zenith"], dtype=float)))
    clipped: np.ndarray = np.clip(cos_zenith, 0.0, 1.0)
    return clipped


def calendar(index: pd.DatetimeIndex) -> pd.DataFrame:
    """Cyclic time-of-day, day-of-week and day-of-year terms (each in [-1, 1])."""
    hours = index.hour.to_numpy() + index.minute.to_numpy() / 60.0
    weekday = index.dayofweek.to_numpy() + hours / 24.0
    day_of_year = index.dayofyear.to_numpy() - 1 + hours / 24.0
    columns = {
        "hour_sin": np.sin(2 * np.pi * hours / 24.0),
        "hour_cos": np.cos(2 * np.pi * hours / 24.0),
        "week_sin": np.sin(2 * np.pi * weekday / 7.0),
        "week_cos": np.cos(2 * np.pi * weekday / 7.0),
        "year_sin": np.sin(2 * np.pi * day_of_year / 365.25),
        "year_cos": np.cos(2 * np.pi * day_of_year / 365.25),
    }
    return pd.DataFrame(columns, index=index)


@dataclass(frozen=True)
class Covariates:
    """Known-in-advance inputs for any time: calendar terms, plus solar geometry given a site."""

    freq: pd.Timedelta
    site: Site | None = None

    @property
    def columns(self) -> list[str]:
        """Names of the columns :meth:`frame` returns."""
        names = list(calendar(pd.DatetimeIndex([], tz="UTC")).columns)
        return [*names, "cos_zenith", "clearsky"] if self.site else names

    def frame(self, index: pd.DatetimeIndex) -> pd.DataFrame:
        """Covariates at ``index``; ``clearsky`` is scaled to [0, 1] (1 = 1,000 W/m²)."""
        frame = calendar(index)
        if self.site is not None:
            frame["cos_zenith"] = _cos_zenith(index, self.site, self.freq)
            frame["clearsky"] = clearsky_ghi(index, self.site, self.freq).to_numpy() / 1000.0
        return frame
