"""Shared fixtures: a check that no test leaks asyncio tasks; OCPP on free ports."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

os.environ.setdefault("DERIM_OCPP_PORT", "0")
"""Every test's OCPP central system listens on a free port, never on the default 9000."""

GRACE_STEP_S = 0.01
GRACE_STEPS = 100
"""Tasks still running after this grace period (1 s) count as leaked; requests in flight at the
end of a test (a shielded Modbus transaction, say) get to finish first."""


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after it returns."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked: list[asyncio.Task[object]] = []
    for step in range(GRACE_STEPS):
        await asyncio.sleep(GRACE_STEP_S if step else 0)
        leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not leaked:
            break
    for task in leaked:
        task.cancel()
    assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"
