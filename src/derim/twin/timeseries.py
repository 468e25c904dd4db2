"""Regular time series: parsing durations, resampling readings onto a fixed step."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from derim.errors import TwinError

MAX_HORIZON = pd.Timedelta(hours=168)
"""The longest forecast horizon served (one week)."""
INTERPOLATE_LIMIT = pd.Timedelta(hours=2)
"""Gaps up to this long are filled by linear interpolation; longer gaps stay missing."""


def parse_duration(text: str, what: str = "duration") -> pd.Timedelta:
    """``"24h"``, ``"15min"``, ``"7d"`` or ``"PT1H"`` as a positive Timedelta."""
    try:
        value = pd.Timedelta(text)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TwinError(
            f"{what} {text!r} is not a duration such as '15min', '24h' or '7d'"
        ) from exc
    if pd.isna(value) or value <= pd.Timedelta(0):
        raise TwinError(f"{what} {text!r} must be longer than zero")
    return value


def duration_text(value: pd.Timedelta) -> str:
    """A duration as ``parse_duration`` reads it back: ``15min``, ``24h``, ``90s``."""
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def horizon_steps(horizon: pd.Timedelta, freq: pd.Timedelta) -> int:
    """Number of steps of ``freq`` covering ``horizon`` (at least one); 168 h at most."""
    if horizon > MAX_HORIZON:
        raise TwinError(f"horizon {horizon} is longer than the maximum of {MAX_HORIZON}")
    return max(1, math.ceil(float(horizon / freq)))


def steps_per_day(freq: pd.Timedelta) -> int:
    """Steps of ``freq`` in a day; the step must divide a day evenly."""
    day = pd.Timedelta(days=1)
    if freq <= pd.Timedelta(0) or day % freq != pd.Timedelta(0):
        raise TwinError(f"step {freq} must divide a day evenly (for example 15min or 1h)")
    return int(day // freq)


def regularise(series: pd.Series, freq: pd.Timedelta) -> pd.Series:
    """Mean of the readings in each ``freq`` interval, labelled by its start, on a UTC index.

    Non-finite readings are an error naming the first one; short gaps are interpolated, long
    gaps stay NaN so forecasters can tell them from zeros.
    """
    steps_per_day(freq)
    if not isinstance(series.index, pd.DatetimeIndex):
        raise TwinError("a time series needs a datetime index")
    values = pd.to_numeric(series, errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        first = series.index[int(np.argmax(bad))]
        raise TwinError(f"value at {first} is not a finite number: {series.loc[first]!r}")
    index = series.index
    values.index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    values = values.sort_index()
    regular = values.resample(freq, label="left", closed="left").mean()
    missing = regular.isna().to_numpy()
    if missing.any():
        filled = regular.interpolate(method="time", limit_area="inside")
        short = missing & (_run_lengths(missing) <= INTERPOLATE_LIMIT // freq)
        regular = regular.where(~short, filled)
    regular.name = series.name
    return regular


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """For each True element, the length of the run of Trues it belongs to (0 elsewhere)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    lengths = np.zeros(len(mask), dtype=int)
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        lengths[start:stop] = stop - start
    return lengths
