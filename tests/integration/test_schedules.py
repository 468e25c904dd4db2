"""Schedules over HTTP against simulated chargers: entries are checked when created, sent at
their time to a device or a whole group, lapse at ``until``, can be cancelled, and are kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from api_server import ApiServer

from async_helpers import until, until_async
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait


def at(seconds: float) -> str:
    """An instant ``seconds`` from now, ISO 8601."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@contextlib.asynccontextmanager
async def chargers(client: httpx.AsyncClient, *ids: str) -> AsyncIterator[list[SimulatedCharger]]:
    """Simulated chargers in group ``depot``, each with an EV drawing its full power."""
    port = (await client.get("/health")).json()["ocpp"]["port"]
    sims, tasks = [], []
    for charge_point_id in ids:
        await client.post("/api/v1/devices", json={
            "id": charge_point_id, "device_type": "ev_charger", "groups": ["depot"],
            "connection": {"protocol": "ocpp", "charge_point_id": charge_point_id}})  # fmt: skip
        sim = SimulatedCharger(
            charge_point_id, f"ws://127.0.0.1:{port}/ocpp", max_power_kw=22, meter_interval_s=0.1
        )
        sims.append(sim)
        tasks.append(asyncio.create_task(sim.run()))
    try:
        for sim in sims:
            await asyncio.wait_for(sim.connected.wait(), 10)
            await sim.plug_in(1, ev_max_kw=22)
        yield sims
    finally:
        for task in tasks:
            await cancel_and_wait(task)


async def test_a_group_schedule_limits_then_lapses(tmp_path: Path) -> None:
    """A group schedule's limit reaches every member at its time and lapses at ``until``;
    each entry lists the commands it sent; the schedule is listed."""
    server = ApiServer(tmp_path / "data").start()
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            chargers(client, "CP-g1", "CP-g2") as sims,
        ):
            created = await client.post("/api/v1/schedules", json={
                "group": "depot", "name": "evening peak",
                "entries": [{"at": at(0.5), "until": at(2.0),
                             "command": "set_power_limit", "value": 5}]})  # fmt: skip
            assert created.status_code == 201, created.text
            schedule_id = created.json()["schedule_id"]
            await until(lambda: all(abs(s.power_kw() - 5) < 0.05 for s in sims))
            await until(lambda: all(s.power_kw() > 20 for s in sims), timeout_s=10)
            body = (await client.get(f"/api/v1/schedules/{schedule_id}")).json()
            (entry,) = body["entries"]
            assert entry["state"] == "done"
            assert len(entry["command_ids"]) == 2
            assert "CP-g1: acknowledged" in entry["outcome"]
            listed = (await client.get("/api/v1/schedules")).json()
            assert [s["name"] for s in listed] == ["evening peak"]
    finally:
        server.stop()


async def test_schedules_are_checked_cancelled_and_kept(tmp_path: Path) -> None:
    """A schedule with a bad entry (a charger cannot set a power factor), out of order, or
    for an unknown device is refused; a cancelled one sends nothing; both survive a restart."""
    data = tmp_path / "data"
    server = ApiServer(data).start()
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            chargers(client, "CP-s") as (sim,),
        ):
            bad = [
                {"device_id": "CP-s",
                 "entries": [{"at": at(5), "command": "set_power_factor", "value": 0.9}]},
                {"device_id": "CP-s",
                 "entries": [{"at": at(9), "command": "reset"},
                             {"at": at(5), "command": "reset"}]},
                {"device_id": "CP-s", "group": "depot",
                 "entries": [{"at": at(5), "command": "reset"}]},
                {"device_id": "CP-s",
                 "entries": [{"at": at(-3600), "command": "reset"}]},
            ]  # fmt: skip
            for body in bad:
                refused = await client.post("/api/v1/schedules", json=body)
                assert refused.status_code == 422, body
            once = [{"at": at(5), "command": "reset"}]
            unknown = await client.post(
                "/api/v1/schedules", json={"device_id": "nobody", "entries": once}
            )
            assert unknown.status_code == 404
            limit = [{"at": at(1.0), "command": "set_power_limit", "value": 3}]
            created = await client.post(
                "/api/v1/schedules", json={"device_id": "CP-s", "entries": limit}
            )
            schedule_id = created.json()["schedule_id"]
            cancelled = await client.delete(f"/api/v1/schedules/{schedule_id}")
            assert cancelled.json()["entries"][0]["state"] == "cancelled"
            await asyncio.sleep(1.5)
            assert sim.power_kw() > 20
            assert sim.resets == []
    finally:
        server.stop()
    again = ApiServer(data).start()
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:

            async def kept() -> bool:
                found = await client.get(f"/api/v1/schedules/{schedule_id}")
                return found.status_code == 200 and found.json()["cancelled"] is True

            await until_async(kept)
            assert (await client.get(f"/api/v1/schedules/{schedule_id}x")).status_code == 422
    finally:
        again.stop()
