"""The command lifecycle over HTTP: every command is recorded with each step's time, found by
id and per device, answered 202 while its device has not answered, and kept across restarts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import websockets
from api_server import ApiServer

from async_helpers import until_async
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait


def steps(record: dict[str, object]) -> list[str]:
    """The statuses a command went through, in order."""
    history = record["history"]
    assert isinstance(history, list)
    return [status for status, _ in history]


async def test_commands_are_recorded_step_by_step_and_survive_restarts(tmp_path: Path) -> None:
    """An acknowledged command, a dry run, an expired command and one answered late (202) are
    each recorded with their steps; a restarted server still has them."""
    data = tmp_path / "data"
    server = ApiServer(data, control_wait_s=0.3, ocpp_call_timeout_s=1).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            port = (await client.get("/health")).json()["ocpp"]["port"]
            charger = SimulatedCharger(
                "CP-life", f"ws://127.0.0.1:{port}/ocpp", response_timeout_s=5
            )
            task = asyncio.create_task(charger.run())
            try:
                await asyncio.wait_for(charger.connected.wait(), 10)
                sent = await client.post("/api/v1/control/CP-life", json={"command": "reset"})
                assert sent.status_code == 200
                assert steps(sent.json()) == ["requested", "validated", "sent", "acknowledged"]
                dry = await client.post(
                    "/api/v1/control/CP-life", json={"command": "reset", "dry_run": True}
                )
                assert dry.json()["status"] == "validated"
                past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
                late = await client.post(
                    "/api/v1/control/CP-life", json={"command": "reset", "expires_at": past}
                )
                assert steps(late.json()) == ["requested", "validated", "expired"]
            finally:
                await cancel_and_wait(task)
            # A charger that never answers: the reply comes before the device's answer.
            address = f"ws://127.0.0.1:{port}/ocpp/CP-mute"
            async with websockets.connect(address, subprotocols=["ocpp1.6"]) as mute:  # type: ignore[list-item]
                await mute.send('[2, "b1", "BootNotification", {"chargePointVendor": "V", '
                                '"chargePointModel": "M"}]')  # fmt: skip
                await mute.recv()
                pending = await client.post("/api/v1/control/CP-mute", json={"command": "reset"})
                assert pending.status_code == 202
                assert pending.json()["status"] == "sent"
                command_id = pending.json()["command_id"]

                async def settled() -> bool:
                    record = (await client.get(f"/api/v1/commands/{command_id}")).json()
                    return record["status"] == "timed_out"

                await until_async(settled)
            history = (await client.get("/api/v1/devices/CP-life/commands")).json()
            assert [c["status"] for c in history] == ["expired", "validated", "acknowledged"]
    finally:
        server.stop()
    again = ApiServer(data).start()
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
            history = (await client.get("/api/v1/devices/CP-life/commands")).json()
            assert len(history) == 3
            record = (await client.get(f"/api/v1/commands/{command_id}")).json()
            assert steps(record) == ["requested", "validated", "sent", "timed_out"]
            assert (await client.get("/api/v1/commands/nope")).status_code == 404
            assert (await client.get("/api/v1/devices/nobody/commands")).status_code == 404
    finally:
        again.stop()
