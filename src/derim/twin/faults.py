"""Fault injection into real series and event-level evaluation of the anomaly detector.

:func:`inject_faults` plants outages, soiling drift, stuck readings, spikes and communication
gaps at random, non-overlapping daylight positions of a PV series; :func:`evaluate` scores
detected anomalies against them: precision is the share of detections that overlap an injected
fault, recall the share of injected faults that some detection overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from derim.errors import TwinError
from derim.twin.anomaly_model import Anomaly
from derim.twin.features import Site, clearsky_ghi

FaultKind = Literal["outage", "drift", "stuck", "spike", "gap"]
FAULT_KINDS: tuple[FaultKind, ...] = ("drift", "outage", "stuck", "spike", "gap")
"""Kinds in the order they are placed (the longest first, so they find room)."""

DURATION_H: dict[FaultKind, tuple[int, int]] = {
    "drift": (14 * 24, 21 * 24),
    "outage": (5, 5),
    "stuck": (4, 8),
    "spike": (0, 0),
    "gap": (3, 12),
}
"""Shortest and longest duration of each kind (h); 0 is a single reading."""
DAYLIGHT_GHI_W_M2 = 100.0
"""Faults are placed where clear-sky irradiance exceeds this (W/m²)."""
MARGIN = pd.Timedelta(days=1)
"""Least time between two injected faults."""


@dataclass(frozen=True)
class InjectedFault:
    """A fault planted in a series: kind, UTC start and (exclusive) end, and what was done."""

    kind: FaultKind
    start: datetime
    end: datetime
    description: str


@dataclass(frozen=True)
class Score:
    """``hits`` out of ``total``; the ratio is 1 when there is nothing to score."""

    hits: int
    total: int

    @property
    def ratio(self) -> float:
        """``hits / total`` (1.0 for an empty total)."""
        return self.hits / self.total if self.total else 1.0


@dataclass(frozen=True)
class Evaluation:
    """Event-level precision and recall, overall and per kind, with the misses listed."""

    precision: Score
    recall: Score
    precision_by_kind: dict[str, Score]
    """Per detected kind: detections overlapping some injected fault."""
    recall_by_kind: dict[str, Score]
    """Per injected kind: faults overlapped by some detection."""
    false_alarms: list[Anomaly] = field(default_factory=list)
    missed: list[InjectedFault] = field(default_factory=list)

    def table(self) -> str:
        """Markdown table: precision and recall overall and per kind."""
        kinds = sorted(set(self.precision_by_kind) | set(self.recall_by_kind))
        rows = ["| kind | precision | recall |", "|---|---|---|"]
        for kind in [*kinds, "overall"]:
            precision = self.precision if kind == "overall" else self.precision_by_kind.get(kind)
            recall = self.recall if kind == "overall" else self.recall_by_kind.get(kind)
            rows.append(f"| {kind} | {_cell(precision)} | {_cell(recall)} |")
        return "\n".join(rows)


def _cell(score: Score | None) -> str:
    if score is None:
        return "-"
    return f"{score.ratio:.2f} ({score.hits}/{score.total})"


def inject_faults(
    series: pd.Series,
    *,
    freq: pd.Timedelta,
    site: Site,
    seed: int,
    per_kind: int = 4,
    capacity: float | None = None,
) -> tuple[pd.Series, list[InjectedFault]]:
    """``series`` (PV power, W) with ``per_kind`` faults of each kind planted, and the faults.

    - outage: 5 h of zero output, all in daylight;
    - drift: soiling, a loss growing linearly to 20-30 % over 14-21 days, then washed off;
    - stuck: the reading frozen for 4-8 h from a daylight reading;
    - spike: one daylight reading raised by 40-80 % of the rating (``capacity``, default the
      largest reading);
    - gap: 3-12 h of missing readings starting in daylight.

    Faults are at least a day apart; a series too short to hold them all is an error.
    """
    if not isinstance(series.index, pd.DatetimeIndex):
        raise TwinError("fault injection needs a series with a datetime index")
    if capacity is not None and not capacity > 0:
        raise TwinError(f"capacity must be a positive number of W, not {capacity}")
    freq = pd.Timedelta(freq)
    rng = np.random.default_rng(seed)
    values = np.asarray(series.to_numpy(), dtype=float).copy()
    rating = capacity if capacity is not None else float(np.nanmax(values))
    daylight = np.asarray(clearsky_ghi(series.index, site, freq), dtype=float) > DAYLIGHT_GHI_W_M2
    free = np.ones(len(values), dtype=bool)
    margin = math.ceil(MARGIN / freq)
    faults: list[InjectedFault] = []
    for kind in FAULT_KINDS:
        for _ in range(per_kind):
            low_h, high_h = DURATION_H[kind]
            hours = int(rng.integers(low_h, high_h + 1))
            length = max(1, math.ceil(pd.Timedelta(hours=hours) / freq))
            start = _place(rng, free, daylight, length, kind, values, rating)
            stop = start + length
            free[max(0, start - margin) : stop + margin] = False
            description = _plant(kind, values, start, stop, rng, rating, freq)
            first = series.index[start].to_pydatetime()
            end = (series.index[stop - 1] + freq).to_pydatetime()
            faults.append(InjectedFault(kind, first, end, description))
    faulty = pd.Series(values, index=series.index, name=series.name)
    return faulty, sorted(faults, key=lambda fault: fault.start)


def _place(
    rng: np.random.Generator,
    free: np.ndarray,
    daylight: np.ndarray,
    length: int,
    kind: FaultKind,
    values: np.ndarray,
    rating: float,
) -> int:
    """A random start of ``length`` free steps: in daylight but for drift (gaps: the start).

    Stuck readings and spikes start from a reading between 5 % of the rating and 95 % of the
    largest reading, so they are neither zero nor at the clipping limit.
    """
    inside = free & daylight if kind in ("outage", "stuck", "spike") else free
    counts = np.convolve(inside.astype(int), np.ones(length, dtype=int), mode="valid")
    fits = counts == length
    if kind == "gap":
        fits &= daylight[: fits.size]
    if kind in ("stuck", "spike"):
        start_values = values[: fits.size]
        fits &= (start_values > 0.05 * rating) & (start_values < 0.95 * np.nanmax(values))
    candidates = np.flatnonzero(fits)
    if candidates.size == 0:
        raise TwinError(f"the series has no room left for another {kind} fault")
    return int(rng.choice(candidates))


def _plant(
    kind: FaultKind,
    values: np.ndarray,
    start: int,
    stop: int,
    rng: np.random.Generator,
    rating: float,
    freq: pd.Timedelta,
) -> str:
    """Apply one fault to ``values[start:stop]`` in place; what was done."""
    hours = (stop - start) * float(freq / pd.Timedelta(hours=1))
    if kind == "outage":
        values[start:stop] = 0.0
        return f"zero output for {hours:g} h"
    if kind == "drift":
        loss = float(rng.uniform(0.2, 0.3))
        values[start:stop] *= 1.0 - loss * np.linspace(0.0, 1.0, stop - start)
        return f"soiling loss growing to {loss:.0%} over {hours / 24:.1f} days, then washed off"
    if kind == "stuck":
        values[start:stop] = values[start]
        return f"reading frozen at {values[start]:.0f} W for {hours:g} h"
    if kind == "spike":
        jump = float(rng.uniform(0.4, 0.8)) * rating
        values[start] += jump
        return f"reading raised by {jump:.0f} W"
    values[start:stop] = np.nan
    return f"no readings for {hours:g} h"


def evaluate(detected: list[Anomaly], injected: list[InjectedFault]) -> Evaluation:
    """Event-level precision and recall of ``detected`` against ``injected``, by overlap."""
    true_detections = [any(_overlap(a, f) for f in injected) for a in detected]
    found = [any(_overlap(a, f) for a in detected) for f in injected]
    return Evaluation(
        precision=Score(sum(true_detections), len(detected)),
        recall=Score(sum(found), len(injected)),
        precision_by_kind=_by_kind([a.kind for a in detected], true_detections),
        recall_by_kind=_by_kind([f.kind for f in injected], found),
        false_alarms=[a for a, hit in zip(detected, true_detections, strict=True) if not hit],
        missed=[f for f, hit in zip(injected, found, strict=True) if not hit],
    )


def _overlap(anomaly: Anomaly, fault: InjectedFault) -> bool:
    return anomaly.start < fault.end and fault.start < anomaly.end


def _by_kind(kinds: list[str], hits: list[bool]) -> dict[str, Score]:
    """A score for each kind: its hits out of its items."""
    return {
        kind: Score(
            sum(hit for other, hit in zip(kinds, hits, strict=True) if other == kind),
            kinds.count(kind),
        )
        for kind in sorted(set(kinds))
    }
