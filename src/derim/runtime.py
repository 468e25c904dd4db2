"""Process-wide tuning for a long-running server: the cyclic garbage collector.

With 10,000 OCPP connections a server process holds ~1.4 million tracked objects. CPython 3.11
walks all of them in a full collection (~1 s on this machine, every event loop task stalled),
and starts one whenever 25 % more objects than the last full walk found have reached the oldest
generation since. With the default thresholds (700, 10, 10) a message that waits a few tens of
ms for its durable write is already promoted there, so steady traffic alone triggered a full
collection every ~10 s although none of those objects was garbage by then.

Larger young-generation thresholds let such objects die young: only what survives ~2.5 million
allocations is promoted, so full collections follow real growth (new connections), not traffic.
Objects that exist once start-up is over are frozen out of every later collection. Each pause
is recorded (``derim_gc_pause_seconds`` at ``/metrics``).
"""

from __future__ import annotations

import bisect
import gc
import time
from typing import Any

YOUNG_THRESHOLD = 50_000
"""Allocations between collections of the youngest generation (CPython's default: 700)."""
MIDDLE_THRESHOLD = 50
"""Young collections between collections of the middle generation (default 10)."""
OLD_THRESHOLD = 10
"""Middle collections before a full one is considered (CPython's default)."""
PAUSE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PauseRecorder:
    """Counts the collector's pauses (s) by upper bound, for a Prometheus histogram."""

    def __init__(self) -> None:
        self.counts = [0] * (len(PAUSE_BUCKETS_S) + 1)
        """Pauses per bucket of ``PAUSE_BUCKETS_S``, the last for longer ones."""
        self.total_s = 0.0
        self.installed = False
        self._started = 0.0

    def install(self) -> None:
        """Start recording (once)."""
        if not self.installed:
            gc.callbacks.append(self._observe)
            self.installed = True

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.counts[bisect.bisect_left(PAUSE_BUCKETS_S, pause)] += 1
        self.total_s += pause


PAUSES = PauseRecorder()
"""This process's collector pauses, recorded once ``tune_collector`` ran."""


def tune_collector() -> None:
    """Freeze what exists now (modules, settings, the app), raise the young thresholds and
    record every pause from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    PAUSES.install()
