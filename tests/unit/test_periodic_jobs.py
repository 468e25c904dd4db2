"""The core's periodic jobs (anomaly scan, forecast refresh) survive a failing run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from derim.services import _every
from derim.tasks import cancel_and_wait


async def test_a_failing_run_is_logged_and_the_job_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run that raises is logged with its traceback, and the next interval runs the job
    again instead of the task ending silently."""
    runs: list[int] = []
    second = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("first run breaks")
        second.set()

    with caplog.at_level(logging.ERROR, logger="derim.services"):
        task = asyncio.create_task(_every(0.01, "test-job", job))
        try:
            await asyncio.wait_for(second.wait(), 5)
        finally:
            await cancel_and_wait(task)
    assert runs[:2] == [0, 1]
    assert "periodic test-job failed" in caplog.text
    assert "first run breaks" in caplog.text
