"""A store that does not take a charger's readings in time: the charger gets an InternalError
(so it sends them again) instead of a false success."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import websockets
from ocpp.exceptions import InternalError
from ocpp.v16 import ChargePoint
from ocpp.v16 import call as call16

from derim.adapters.ocpp.central import CentralSystem
from derim.config import load_settings
from derim.models.telemetry import DERTelemetry
from derim.storage.registry import DeviceRegistry
from derim.storage.rejects import RejectStore
from derim.storage.sessions import SessionStore
from derim.tasks import cancel_and_wait


@contextlib.asynccontextmanager
async def central_with_stuck_store(data_dir: Path) -> AsyncIterator[CentralSystem]:
    """A central system whose storage never finishes a write."""

    async def stuck(records: Sequence[DERTelemetry]) -> None:
        await asyncio.sleep(3600)

    settings = load_settings(data_dir=data_dir, ocpp_message_timeout_s=0.2)
    registry = DeviceRegistry(data_dir / "derim.db")
    sessions = SessionStore(data_dir / "sessions.db")
    rejects = RejectStore(data_dir / "rejects.db")
    for part in (registry, sessions, rejects):
        await part.open()
    central = CentralSystem(settings, registry, sessions, rejects, stuck)
    await central.start()
    try:
        yield central
    finally:
        await central.aclose()
        rejects.close()
        for part in (sessions, registry):
            await part.close()


async def test_readings_the_store_cannot_take_in_time_get_an_internal_error(
    tmp_path: Path,
) -> None:
    """MeterValues answered with a CallError InternalError after the message timeout, while
    the charger's heartbeats keep being answered."""
    async with central_with_stuck_store(tmp_path) as central:
        address = f"ws://127.0.0.1:{central.port}/ocpp/CP-stuck"
        async with websockets.connect(address, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            point = ChargePoint("CP-stuck", ws, response_timeout=5)
            task = asyncio.create_task(point.start())
            try:
                reading = [{"timestamp": "2026-11-26T08:00:00Z", "sampledValue": [{"value": "5"}]}]
                with pytest.raises(InternalError):
                    await point.call(
                        call16.MeterValues(connector_id=1, meter_value=reading), suppress=False
                    )
                answer = await point.call(call16.Heartbeat())
                assert answer.current_time
                assert central.counters.call_errors == 1
            finally:
                await cancel_and_wait(task)
