"""Anomaly detection for the digital twin: rule checks on a measured series, and deviations from
the forecast's P10-P90 band.

:func:`detect` runs these rules on a regular series (W, UTC index of interval starts) and
returns one :class:`Anomaly` per event, sorted by start:

- ``gap``: ``gap_steps`` or more readings missing in a row (a communication gap).
- ``out_of_range``: readings above ``range_max_factor`` x the rating or below
  ``range_min_fraction`` x the rating (or explicit limits); for solar, also readings above the
  clear-sky ceiling for longer than a spike.
- ``outage`` (solar): output at or below ``outage_fraction`` of the rating while clear-sky
  irradiance exceeds ``outage_clearsky_ghi``, for ``outage_min_minutes`` of such daylight.
- ``stuck``: the same non-zero reading for ``stuck_min_minutes`` while it should vary (in
  daylight for solar, else always). A level the series rests on on ``stuck_plateau_days``
  different days (inverter clipping, an export limit, a thermostat) is a limit, not a fault.
- ``spike``: one or two readings far from the median of their neighbours (a robust z-score), or,
  for solar, above the clear-sky ceiling.
- ``drift`` (solar, or given ``expected``): the daily performance ratio below ``drift_threshold``
  for ``drift_min_days`` days in a row (soiling, degradation, a failed string).
- ``residual`` (given ``expected``): readings more than ``residual_band_multiple`` band widths
  outside P10-P90 for ``residual_min_minutes``, where no other rule explains them.

A series is solar when a site is given. Its physical expectation needs no forecast: clear-sky
irradiance on the array plane (Haurwitz GHI, Erbs split, isotropic transposition onto a plane
facing the equator) times the expected ratio of output to that irradiance, which is the
``drift_reference_quantile`` of the daily peak ratios (readings where clear-sky GHI exceeds
``drift_clearsky_ghi``) in the ``drift_reference_days`` centred on the day. Clear hours recur
within days, so this envelope is what the array yields under a clear sky whatever the weather of
the day. Unless ``array_tilt_deg`` is set, the tilt is the one of 0-60 degrees (10-degree steps)
that keeps the expected ratio steadiest through a series of ``drift_reference_days`` or more,
else the latitude. The daily performance ratio is the day's peak ratio over the expected one; the
ceiling is the envelope (times ``ceiling_low_sun_factor`` at low sun, where the clear-sky model
underrates irradiance) plus ``ceiling_margin`` of the rating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
import pvlib
from pydantic import BaseModel, ConfigDict, Field, model_validator

from derim.errors import TwinError
from derim.twin.anomaly_model import Anomaly as Anomaly  # re-exported: the detector's output
from derim.twin.anomaly_model import AnomalyKind, Severity
from derim.twin.features import Site, clearsky_ghi
from derim.twin.timeseries import steps_per_day

SPIKE_MAX_STEPS = 2
"""Longer excursions above the clear-sky ceiling are out of range rather than spikes."""
NANOS_PER_DAY = 86_400_000_000_000
TILTS_DEG = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
"""Array tilts tried when none is configured and the series is long enough to fit one."""


class AnomalyConfig(BaseModel):
    """Thresholds of the rules; power in W, irradiance in W/m² (clear-sky GHI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    residual_band_multiple: float = Field(1.0, ge=0.0, le=20.0)
    """Flag readings further than this many band widths (P90 - P10) outside P10-P90..."""
    residual_floor_w: float = Field(50.0, ge=0.0)
    """...and further than this (W), so a zero-width night band does not flag noise..."""
    residual_min_minutes: float = Field(120.0, gt=0.0, le=10_080.0)
    """...for at least this long (minutes)."""

    outage_fraction: float = Field(0.02, ge=0.0, le=1.0)
    """Output at or below this fraction of the rating counts as none..."""
    outage_clearsky_ghi: float = Field(300.0, ge=0.0, le=1200.0)
    """...while clear-sky irradiance exceeds this (W/m²)..."""
    outage_min_minutes: float = Field(120.0, gt=0.0, le=10_080.0)
    """...for at least this long (minutes of such daylight)."""

    stuck_min_minutes: float = Field(180.0, gt=0.0, le=10_080.0)
    """Equal readings for this long (minutes, at least two readings) are a frozen meter."""
    stuck_tolerance: float = Field(1e-3, ge=0.0)
    """Readings this close (W) count as equal."""
    stuck_clearsky_ghi: float = Field(50.0, ge=0.0, le=1200.0)
    """Solar readings should vary where clear-sky irradiance exceeds this (W/m²)."""
    stuck_plateau_days: int = Field(3, ge=2, le=366)
    """A level held on this many different days is a limit (clipping), not a frozen meter."""
    stuck_ignore_zero: bool = True
    """Runs of zeros are idle devices or outages (the outage rule), not frozen meters."""

    range_max_factor: float = Field(1.1, gt=0.0, le=100.0)
    """Readings above this multiple of the rating are out of range."""
    range_min_fraction: float = Field(-0.05, ge=-100.0, le=0.0)
    """Readings below this multiple of the rating (negative: reverse flow) are out of range."""
    max_value: float | None = None
    """Upper limit (W) instead of ``range_max_factor`` x rating."""
    min_value: float | None = None
    """Lower limit (W) instead of ``range_min_fraction`` x rating."""
    ceiling_margin: float = Field(0.15, gt=0.0, le=10.0)
    """Solar readings more than this fraction of the rating above the clear-sky envelope exceed
    the ceiling."""

    ceiling_low_sun_factor: float = Field(1.5, ge=1.0, le=10.0)
    """The clear-sky model underrates low sun: where clear-sky irradiance is at most
    ``drift_clearsky_ghi``, the envelope is multiplied by this before adding the margin."""

    gap_steps: int = Field(2, ge=1, le=1_000_000)
    """This many missing readings in a row is a communication gap."""

    spike_z: float = Field(12.0, gt=0.0, le=1000.0)
    """A reading further from its neighbours' median than this many scales is a spike; the scale
    is the ``spike_scale_quantile`` of such distances over ``spike_scale_days``."""
    spike_window: int = Field(5, ge=3, le=99)
    """Readings in the centred rolling median (odd)."""
    spike_scale_days: float = Field(7.0, gt=0.0, le=366.0)
    """Days in the centred window of the scale."""
    spike_scale_quantile: float = Field(0.9, gt=0.0, le=1.0)
    """Quantile of the distances (in daylight for solar) taken as the scale."""
    spike_floor_fraction: float = Field(0.02, gt=0.0, le=1.0)
    """Least scale, as a fraction of the rating, so flat series do not flag noise."""

    drift_threshold: float = Field(0.9, gt=0.0, lt=1.0)
    """A daily performance ratio below this is drift..."""
    drift_min_days: int = Field(8, ge=1, le=366)
    """...for at least this many days in a row."""
    drift_reference_days: int = Field(61, ge=7, le=731)
    """Days in the centred window of the expected clear-sky ratio."""
    drift_reference_quantile: float = Field(0.9, gt=0.0, le=1.0)
    """Quantile of the daily peak ratios in that window taken as expected."""
    drift_clearsky_ghi: float = Field(300.0, ge=0.0, le=1200.0)
    """Only readings where clear-sky irradiance exceeds this (W/m²) enter the daily ratio."""
    array_tilt_deg: float | None = Field(None, ge=0.0, le=90.0)
    """Tilt of the array (degrees); by default fitted to the data (see :func:`detect`)."""
    array_azimuth_deg: float | None = Field(None, ge=0.0, le=360.0)
    """Assumed azimuth of the array (degrees, 180 = south); default facing the equator."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.spike_window % 2 == 0:
            raise ValueError(f"spike_window must be odd, not {self.spike_window}")
        low, high = self.min_value, self.max_value
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_value {low} must be below max_value {high}")
        return self


DEFAULT_CONFIG = AnomalyConfig()


@dataclass(frozen=True)
class _Solar:
    """The physical expectation of a PV series (see the module docstring)."""

    clearsky: np.ndarray
    """Clear-sky GHI (W/m²) at each step."""
    envelope: np.ndarray
    """Expected clear-sky output (W) at each step; NaN where the reference is unknown."""
    day_ratio: np.ndarray
    """Each day's peak ratio over the expected ratio."""
    day_of_step: np.ndarray
    """Position of each step's day in ``day_ratio``."""
    used: np.ndarray
    """Steps that entered the daily ratios."""


@dataclass(frozen=True)
class _Series:
    """The validated input of :func:`detect` as numpy arrays."""

    index: pd.DatetimeIndex
    values: np.ndarray
    finite: np.ndarray
    freq: pd.Timedelta
    field: str
    config: AnomalyConfig
    capacity: float | None
    solar: _Solar | None

    @property
    def hours(self) -> float:
        """Length of one step (h)."""
        return float(self.freq / pd.Timedelta(hours=1))

    @property
    def rating(self) -> float | None:
        """The capacity, else the largest reading (W); None when neither is positive."""
        if self.capacity is not None:
            return self.capacity
        peak = float(np.max(self.values[self.finite])) if self.finite.any() else 0.0
        return peak if peak > 0 else None

    def steps(self, minutes: float) -> int:
        """Steps covering ``minutes`` (at least one)."""
        return max(1, math.ceil(float(pd.Timedelta(minutes=minutes) / self.freq)))

    def ceiling(self) -> np.ndarray | None:
        """Largest plausible solar reading (W) at each step (NaN where the reference is unknown);
        None if not solar."""
        rating = self.rating
        if self.solar is None or rating is None:
            return None
        clearsky = self.solar.clearsky
        low_sun = (clearsky > 0) & (clearsky <= self.config.drift_clearsky_ghi)
        factor = np.where(low_sun, self.config.ceiling_low_sun_factor, 1.0)
        ceiling: np.ndarray = factor * self.solar.envelope + self.config.ceiling_margin * rating
        return ceiling

    def anomaly(
        self, kind: AnomalyKind, first: int, last: int, severity: Severity, reason: str
    ) -> Anomaly:
        """An anomaly from step ``first`` to the end of step ``last``."""
        start = self.index[first].to_pydatetime()
        end = (self.index[last] + self.freq).to_pydatetime()
        return Anomaly(
            kind=kind, field=self.field, start=start, end=end, severity=severity, reason=reason
        )


def detect(
    measured: pd.Series,
    *,
    freq: pd.Timedelta,
    expected: pd.DataFrame | None = None,
    site: Site | None = None,
    capacity: float | None = None,
    config: AnomalyConfig = DEFAULT_CONFIG,
    field: str = "ac_power_w",
) -> list[Anomaly]:
    """Anomalies in ``measured`` (W, regular at ``freq``, UTC interval starts, NaN = missing).

    ``expected`` (columns p10, p50, p90 on the same index) enables the residual rule and, for a
    series without a site, drift as each day's energy over the P50's; ``site`` marks the series
    as solar (daylight rules, clear-sky expectation); ``capacity`` is the rating (W) for the
    range limits, without which the outage level and margins scale with the largest reading.
    Drift and the clear-sky ceiling need about a quarter of ``drift_reference_days`` of data.
    """
    series = _validated(measured, freq, expected, site, capacity, config, field)
    taken = np.zeros(len(series.values), dtype=bool)
    found: list[Anomaly] = []
    for rule in (_gaps, _out_of_range, _outages, _stuck, _spikes):
        anomalies, flagged = rule(series, taken)
        found += anomalies
        taken |= flagged
    drift, flagged = _drift(series, expected)
    found += drift
    if expected is not None:
        found += _residuals(series, expected, taken | flagged)
    return sorted(found, key=lambda anomaly: (anomaly.start, anomaly.kind))


def _validated(
    measured: pd.Series,
    freq: pd.Timedelta,
    expected: pd.DataFrame | None,
    site: Site | None,
    capacity: float | None,
    config: AnomalyConfig,
    field: str,
) -> _Series:
    if not isinstance(measured, pd.Series):
        raise TwinError(f"measured {field} must be a pandas Series, not {type(measured).__name__}")
    if not isinstance(measured.index, pd.DatetimeIndex):
        kind = type(measured.index).__name__
        raise TwinError(f"measured {field} needs a datetime index, not a {kind}")
    freq = pd.Timedelta(freq)
    steps_per_day(freq)
    if capacity is not None and not (math.isfinite(capacity) and capacity > 0):
        raise TwinError(f"capacity must be a positive number of W, not {capacity}")
    index = measured.index
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    index = index.as_unit("ns")  # pandas 3 may keep µs or s; the arithmetic below is in ns
    irregular = np.flatnonzero(np.diff(index.asi8) != freq.value)
    if irregular.size:
        at = int(irregular[0])
        raise TwinError(
            f"measured {field} is not regular at {freq}: {index[at + 1]} follows {index[at]}"
        )
    try:
        values = np.asarray(measured.to_numpy(), dtype=float)
    except (TypeError, ValueError) as exc:
        raise TwinError(f"measured {field} holds values that are not numbers: {exc}") from exc
    infinite = np.isinf(values)
    if infinite.any():
        raise TwinError(f"measured {field} is infinite at {index[int(np.argmax(infinite))]}")
    if expected is not None:
        _check_expected(expected, measured.index, field)
    finite = np.isfinite(values)
    solar = None
    if site is not None and finite.any():
        solar = _solar(index, values, finite, freq, site, config)
    return _Series(index, values, finite, freq, field, config, capacity, solar)


def _check_expected(expected: pd.DataFrame, index: pd.Index, field: str) -> None:
    if not isinstance(expected, pd.DataFrame):
        raise TwinError(f"expected {field} must be a DataFrame with columns p10, p50, p90")
    missing = {"p10", "p50", "p90"} - set(expected.columns)
    if missing:
        raise TwinError(f"expected {field} lacks columns {sorted(missing)}")
    if not expected.index.equals(index):
        raise TwinError(f"expected {field} is not on the index of the measured series")


def _solar(
    index: pd.DatetimeIndex,
    values: np.ndarray,
    finite: np.ndarray,
    freq: pd.Timedelta,
    site: Site,
    config: AnomalyConfig,
) -> _Solar:
    """The clear-sky expectation of a PV series at ``site``."""
    clearsky = np.asarray(clearsky_ghi(index, site, freq), dtype=float)
    plane = _Plane.at(index, freq, site, clearsky)
    days = (index.asi8 + int(site.longitude / 15.0 * 3_600_000_000_000)) // NANOS_PER_DAY
    azimuth = config.array_azimuth_deg
    if azimuth is None:
        azimuth = 180.0 if site.latitude >= 0 else 0.0
    if config.array_tilt_deg is not None:
        tilts: tuple[float, ...] = (config.array_tilt_deg,)
    elif days[-1] - days[0] >= config.drift_reference_days:
        tilts = TILTS_DEG
    else:
        tilts = (abs(site.latitude),)
    daylight = finite & (clearsky > config.drift_clearsky_ghi)
    fits = [_fit(plane.irradiance(tilt, azimuth), values, daylight, days, config) for tilt in tilts]
    fit = min(fits, key=lambda candidate: candidate.spread)
    day_of_step = np.searchsorted(fit.days, days)
    with np.errstate(invalid="ignore", divide="ignore"):
        day_ratio = fit.peak / fit.reference
    envelope = fit.poa * fit.reference[day_of_step]
    return _Solar(clearsky, envelope, day_ratio, day_of_step, fit.used)


@dataclass(frozen=True)
class _Fit:
    """Daily peak and expected ratios (W per W/m²) of output to one plane's irradiance."""

    poa: np.ndarray
    used: np.ndarray
    days: np.ndarray
    peak: np.ndarray
    reference: np.ndarray
    spread: float
    """Standard deviation of the log of the expected ratio: low for the right plane."""


def _fit(
    poa: np.ndarray,
    values: np.ndarray,
    daylight: np.ndarray,
    days: np.ndarray,
    config: AnomalyConfig,
) -> _Fit:
    """Daily peak and expected ratios of ``values`` (W) to ``poa`` (W/m²) in ``daylight``."""
    used = daylight & (poa > 0)
    ratio = np.where(used, values / np.where(used, poa, 1.0), np.nan)
    peak = pd.Series(ratio).groupby(days).max()
    window = config.drift_reference_days
    reference = np.asarray(
        peak.rolling(window, center=True, min_periods=max(1, window // 4)).quantile(
            config.drift_reference_quantile
        ),
        dtype=float,
    )
    positive = reference[np.isfinite(reference) & (reference > 0)]
    spread = float(np.std(np.log(positive))) if positive.size else math.inf
    return _Fit(poa, used, np.asarray(peak.index), np.asarray(peak, dtype=float), reference, spread)


@dataclass(frozen=True)
class _Plane:
    """Clear-sky sun and sky at each interval's middle, to transpose onto any array plane."""

    zenith: np.ndarray
    azimuth: np.ndarray
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray

    @classmethod
    def at(
        cls, index: pd.DatetimeIndex, freq: pd.Timedelta, site: Site, clearsky: np.ndarray
    ) -> _Plane:
        """Solar position and the Erbs split of the clear-sky GHI (W/m²) at ``index``."""
        middle = index + freq / 2
        position = pvlib.solarposition.ephemeris(middle, site.latitude, site.longitude)
        zenith = np.asarray(position["apparent_zenith"], dtype=float)
        parts = pvlib.irradiance.erbs(clearsky, zenith, middle)
        return cls(
            zenith,
            np.asarray(position["azimuth"], dtype=float),
            clearsky,
            np.asarray(parts["dni"], dtype=float),
            np.asarray(parts["dhi"], dtype=float),
        )

    def irradiance(self, tilt: float, azimuth: float) -> np.ndarray:
        """Clear-sky irradiance (W/m²) on a plane at ``tilt`` and ``azimuth`` (degrees)."""
        poa = pvlib.irradiance.get_total_irradiance(
            tilt, azimuth, self.zenith, self.azimuth, self.dni, self.ghi, self.dhi
        )
        irradiance: np.ndarray = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float))
        return irradiance


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and (exclusive) stops of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _runs_among(mask: np.ndarray, among: np.ndarray) -> list[np.ndarray]:
    """Positions of each run of ``mask``, counting only steps where ``among`` holds.

    Other steps (night, missing readings) neither break nor extend a run.
    """
    positions = np.flatnonzero(among)
    starts, stops = _runs(mask[positions])
    return [positions[start:stop] for start, stop in zip(starts, stops, strict=True)]


def _grade(value: float, medium: float, high: float) -> Severity:
    """``high`` from ``high`` on, ``medium`` from ``medium`` on, else ``low``."""
    if value >= high:
        return "high"
    return "medium" if value >= medium else "low"


def _gaps(series: _Series, taken: np.ndarray) -> tuple[list[Anomaly], np.ndarray]:
    """Runs of at least ``gap_steps`` missing readings."""
    flagged = np.zeros_like(taken)
    found = []
    for start, stop in zip(*_runs(~series.finite), strict=True):
        steps = int(stop - start)
        if steps < series.config.gap_steps:
            continue
        hours = steps * series.hours
        reason = f"no readings for {hours:.1f} h ({steps} missing in a row)"
        found.append(series.anomaly("gap", start, stop - 1, _grade(hours, 3.0, 24.0), reason))
        flagged[start:stop] = True
    return found, flagged


def _limits(series: _Series) -> tuple[float | None, float | None]:
    """Lower and upper limit (W) from the config or the capacity."""
    config, capacity = series.config, series.capacity
    low = config.min_value
    if low is None and capacity is not None:
        low = config.range_min_fraction * capacity
    high = config.max_value
    if high is None and capacity is not None:
        high = config.range_max_factor * capacity
    return low, high


def _out_of_range(series: _Series, taken: np.ndarray) -> tuple[list[Anomaly], np.ndarray]:
    """Readings beyond the limits, and solar readings above the ceiling for over a spike."""
    values, finite = series.values, series.finite
    low, high = _limits(series)
    scale = series.rating or 1.0
    flagged = np.zeros_like(taken)
    found = []
    for limit, sign, word in ((high, 1.0, "above"), (low, -1.0, "below")):
        if limit is None:
            continue
        beyond = finite & (sign * (values - limit) > 0)
        for start, stop in zip(*_runs(beyond), strict=True):
            chunk = values[start:stop]
            worst = float(chunk.max() if sign > 0 else chunk.min())
            reason = (
                f"{stop - start} reading(s) {word} the limit of {limit:.0f} W, "
                f"the furthest at {worst:.0f} W"
            )
            severity = _grade(abs(worst - limit) / scale, 0.1, 0.5)
            found.append(series.anomaly("out_of_range", start, stop - 1, severity, reason))
        flagged |= beyond
    ceiling = series.ceiling()
    if ceiling is not None:
        with np.errstate(invalid="ignore"):
            above = finite & (values > ceiling) & ~flagged
        for start, stop in zip(*_runs(above), strict=True):
            if stop - start <= SPIKE_MAX_STEPS:
                continue
            excess = float(np.mean(values[start:stop] - ceiling[start:stop]))
            reason = (
                f"{stop - start} readings above the clear-sky ceiling by {excess:.0f} W on average"
            )
            severity = _grade(excess / scale, 0.1, 0.5)
            found.append(series.anomaly("out_of_range", start, stop - 1, severity, reason))
            flagged[start:stop] = True
    return found, flagged


def _outages(series: _Series, taken: np.ndarray) -> tuple[list[Anomaly], np.ndarray]:
    """Solar output at or below the outage level through enough clear-sky daylight."""
    flagged = np.zeros_like(taken)
    rating = series.rating
    if series.solar is None or rating is None:
        return [], flagged
    config, clearsky = series.config, series.solar.clearsky
    level = config.outage_fraction * rating
    sunny = (clearsky > config.outage_clearsky_ghi) & series.finite
    min_steps = series.steps(config.outage_min_minutes)
    found = []
    for positions in _runs_among(series.values <= level, sunny):
        if positions.size < min_steps:
            continue
        hours = positions.size * series.hours
        mean = float(series.values[positions].mean())
        ghi = float(clearsky[positions].mean())
        reason = (
            f"output {mean:.0f} W (at most {level:.0f} W, {config.outage_fraction:.0%} of "
            f"{rating:.0f} W) for {hours:.1f} h while clear-sky irradiance averaged {ghi:.0f} W/m²"
        )
        severity = _grade(positions.size / min_steps, 1.0, 2.0)
        found.append(series.anomaly("outage", positions[0], positions[-1], severity, reason))
        flagged[positions[0] : positions[-1] + 1] = True
    return found, flagged


def _stuck(series: _Series, taken: np.ndarray) -> tuple[list[Anomaly], np.ndarray]:
    """The same reading for ``stuck_min_minutes`` while the series should vary."""
    config = series.config
    flagged = np.zeros_like(taken)
    varying = series.finite & ~taken
    if series.solar is not None:
        varying &= series.solar.clearsky > config.stuck_clearsky_ghi
    positions = np.flatnonzero(varying)
    if positions.size < 2:
        return [], flagged
    chosen = series.values[positions]
    counted = np.ones(positions.size, dtype=bool)
    if config.stuck_ignore_zero:
        counted = np.abs(chosen) > config.stuck_tolerance
    same = (np.abs(np.diff(chosen)) <= config.stuck_tolerance) & counted[1:] & counted[:-1]
    same &= ~_plateaus(series, positions[1:], chosen[1:], same)
    min_readings = max(2, series.steps(config.stuck_min_minutes))
    found = []
    for start, stop in zip(*_runs(same), strict=True):
        readings = int(stop - start) + 1
        if readings < min_readings:
            continue
        first, last = int(positions[start]), int(positions[stop])
        hours = (last - first + 1) * series.hours
        reason = (
            f"reading frozen at {chosen[start]:.1f} W for {readings} readings over {hours:.1f} h "
            "while it should vary"
        )
        severity = _grade(readings / min_readings, 2.0, 4.0)
        found.append(series.anomaly("stuck", first, last, severity, reason))
        flagged[first : last + 1] = True
    return found, flagged


def _plateaus(
    series: _Series, positions: np.ndarray, values: np.ndarray, same: np.ndarray
) -> np.ndarray:
    """Which of ``values`` repeat a level held on ``stuck_plateau_days`` or more days."""
    tolerance = series.config.stuck_tolerance
    levels = np.round(values / tolerance) if tolerance > 0 else values
    days = series.index.asi8[positions] // NANOS_PER_DAY
    held = np.unique(np.stack([levels[same], days[same]]), axis=1)
    kinds, counts = np.unique(held[0], return_counts=True)
    limits = kinds[counts >= series.config.stuck_plateau_days]
    plateau: np.ndarray = np.isin(levels, limits)
    return plateau


def _spikes(series: _Series, taken: np.ndarray) -> tuple[list[Anomaly], np.ndarray]:
    """Readings far from their neighbours' median (robust z-score) or above the ceiling."""
    config, values = series.config, series.values
    flagged = np.zeros_like(taken)
    rating = series.rating
    if rating is None:
        return [], flagged
    window = config.spike_window
    median = np.asarray(
        pd.Series(values).rolling(window, center=True, min_periods=window // 2 + 1).median(),
        dtype=float,
    )
    distance = values - median
    active = series.finite.copy()
    if series.solar is not None:
        active &= series.solar.clearsky > config.stuck_clearsky_ghi
    days = max(3, round(config.spike_scale_days * pd.Timedelta(days=1) / series.freq))
    typical = (
        pd.Series(np.where(active, np.abs(distance), np.nan))
        .rolling(days, center=True, min_periods=1)
        .quantile(config.spike_scale_quantile)
    )
    scale = np.fmax(np.asarray(typical, dtype=float), config.spike_floor_fraction * rating)
    ceiling = series.ceiling()
    with np.errstate(invalid="ignore"):
        z = distance / scale
        spiky = np.abs(z) > config.spike_z
        if ceiling is not None:
            spiky |= values > ceiling
    spiky &= series.finite & ~taken
    found = []
    for start, stop in zip(*_runs(spiky), strict=True):
        worst = start + int(np.argmax(np.abs(distance[start:stop])))
        reason = (
            f"reading {values[worst]:.0f} W is {distance[worst]:+.0f} W from the median of its "
            f"neighbours ({median[worst]:.0f} W), robust z-score {z[worst]:+.1f}"
        )
        if ceiling is not None and values[worst] > ceiling[worst]:
            reason += f", above the clear-sky ceiling of {ceiling[worst]:.0f} W"
        severity = _grade(abs(z[worst]) / config.spike_z, 2.0, 4.0)
        found.append(series.anomaly("spike", start, stop - 1, severity, reason))
        flagged[start:stop] = True
    return found, flagged


def _drift(series: _Series, expected: pd.DataFrame | None) -> tuple[list[Anomaly], np.ndarray]:
    """At least ``drift_min_days`` days in a row with a performance ratio below the threshold."""
    config = series.config
    flagged = np.zeros(len(series.values), dtype=bool)
    if series.solar is not None:
        ratios, day_of_step, used = (
            series.solar.day_ratio, series.solar.day_of_step, series.solar.used
        )  # fmt: skip
        what = "peak output / clear-sky irradiance"
    elif expected is not None:
        ratios, day_of_step, used = _energy_ratios(series, expected)
        what = "energy / P50 energy"
    else:
        return [], flagged
    with np.errstate(invalid="ignore"):
        low = ratios < config.drift_threshold
    found = []
    for start, stop in zip(*_runs(low), strict=True):
        if stop - start < config.drift_min_days:
            continue
        steps = np.flatnonzero(used & (day_of_step >= start) & (day_of_step < stop))
        mean, worst = float(np.mean(ratios[start:stop])), float(np.min(ratios[start:stop]))
        reason = (
            f"daily {what} at {mean:.0%} of expected on average (lowest {worst:.0%}) "
            f"for {stop - start} days, below {config.drift_threshold:.0%}"
        )
        severity = _grade(1.0 - mean, 0.2, 0.35)
        found.append(series.anomaly("drift", steps[0], steps[-1], severity, reason))
        flagged[steps[0] : steps[-1] + 1] = True
    return found, flagged


def _energy_ratios(
    series: _Series, expected: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each UTC day's measured energy over its P50 energy, step-to-day positions, used steps."""
    p50 = np.asarray(expected["p50"], dtype=float)
    used = series.finite & np.isfinite(p50) & (p50 > 0)
    days = series.index.asi8 // NANOS_PER_DAY
    sums = pd.DataFrame(
        {"measured": np.where(used, series.values, 0.0), "p50": np.where(used, p50, 0.0)}
    ).groupby(days)
    totals = sums.sum()
    measured = np.asarray(totals["measured"], dtype=float)
    planned = np.asarray(totals["p50"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(planned > 0, measured / planned, np.nan)
    return ratios, np.searchsorted(np.asarray(totals.index), days), used


def _residuals(series: _Series, expected: pd.DataFrame, taken: np.ndarray) -> list[Anomaly]:
    """Runs of readings far outside the P10-P90 band that no other rule flagged."""
    config, values = series.config, series.values
    p10 = np.asarray(expected["p10"], dtype=float)
    p90 = np.asarray(expected["p90"], dtype=float)
    width = p90 - p10
    margin = np.fmax(config.residual_band_multiple * width, config.residual_floor_w)
    with np.errstate(invalid="ignore"):
        outside_by = np.fmax(p10 - values, values - p90)
        outside = (outside_by > margin) & ~taken
    min_steps = series.steps(config.residual_min_minutes)
    found = []
    for start, stop in zip(*_runs(outside), strict=True):
        if stop - start < min_steps:
            continue
        chunk = slice(start, stop)
        side = "below P10" if np.mean(values[chunk] < p10[chunk]) > 0.5 else "above P90"
        mean_by, mean_width = float(np.mean(outside_by[chunk])), float(np.mean(width[chunk]))
        hours = (stop - start) * series.hours
        reason = (
            f"readings {side} by {mean_by:.0f} W on average for {hours:.1f} h "
            f"(band width {mean_width:.0f} W)"
        )
        severity = _grade(mean_by / max(mean_width, config.residual_floor_w, 1.0), 3.0, 6.0)
        found.append(series.anomaly("residual", start, stop - 1, severity, reason))
    return found
