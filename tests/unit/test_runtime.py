"""The server's collector tuning: start-up objects frozen, young thresholds raised."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from derim.runtime import (
    MIDDLE_THRESHOLD,
    PAUSES,
    YOUNG_THRESHOLD,
    PauseRecorder,
    tune_collector,
)


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """Put the test process's collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    if PAUSES.installed:
        gc.callbacks.remove(PAUSES._observe)
        PAUSES.installed = False
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_tuning_freezes_startup_objects_and_raises_thresholds() -> None:
    """Objects alive at tuning are frozen out of collections; later ones are collected with
    the raised young and middle thresholds."""
    gc.unfreeze()
    tune_collector()
    assert gc.get_freeze_count() > 1_000
    assert gc.get_threshold()[:2] == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD)
    assert PAUSES.installed


def test_pauses_are_counted_by_bucket() -> None:
    """Each collection adds one pause to the bucket its duration falls in, and to the sum."""
    recorder = PauseRecorder()
    recorder.install()
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(recorder._observe)
    assert sum(recorder.counts) == 1
    assert recorder.total_s > 0
