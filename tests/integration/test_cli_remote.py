"""``derim remote`` against the real API over HTTP: health, devices, latest readings, commands to
a Modbus battery, the live stream, tables and JSON, and its errors as one line with status 1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_server import ApiServer
from click.testing import CliRunner, Result
from influxd import free_ports
from modbus_server import RegisterServer
from pymodbus.constants import ExcCodes

from async_helpers import until_async
from derim.cli_remote import remote
from derim.client import DerimClient
from derim.models.telemetry import MeterTelemetry
from derim.security.audit import AuditEntry
from derim.security.keys import KeyStore, Role

UNIT = 2
NO_ENV = {"DERIM_URL": None, "DERIM_API_KEY": None}


def cli(url: str, *args: str) -> Result:
    """``derim remote --url URL ARGS`` in this process (stdout and stderr kept apart)."""
    return CliRunner().invoke(remote, ["--url", url, *args], env=NO_ENV)


def derim(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``derim ARGS`` as a process, with ``env`` added to a clean DERIM environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("DERIM_URL", "DERIM_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "derim.cli", *args],
        env={**base, "DERIM_DATA_DIR": str(data_dir), "DERIM_LOG_LEVEL": "WARNING", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reading(power_kw: float, at: datetime | None = None) -> MeterTelemetry:
    return MeterTelemetry(device_id="m1", timestamp=at or datetime.now(UTC), power_kw=power_kw)


@pytest.fixture
def meter(api: ApiServer) -> Iterator[DerimClient]:
    """The API with a meter m1 registered and two readings (1.5 kW, then 2.5 kW) stored."""
    with DerimClient(api.url, timeout_s=10) as client:
        client.create_device({"id": "m1", "device_type": "meter", "name": "Meter"})
        now = datetime.now(UTC)
        client.ingest([reading(1.5, now - timedelta(minutes=2)), reading(2.5, now)])
        yield client


def test_health_devices_and_latest_as_tables(api: ApiServer, meter: DerimClient) -> None:
    """health lists status, storage and ingest counters; devices a row per device with its
    protocol; latest the newest reading's fields, each in an aligned column."""
    health = cli(api.url, "health")
    assert health.exit_code == 0, health.output
    rows = dict(line.split(maxsplit=1) for line in health.stdout.splitlines()[1:])
    assert rows["status"] == "ok"
    assert rows["storage.reachable"] == "True"
    assert rows["ingest.received"] == "2"
    assert rows["grid_links"] == "-"
    devices = cli(api.url, "devices")
    assert devices.exit_code == 0, devices.output
    header, row = devices.stdout.splitlines()
    assert header.split() == ["id", "type", "protocol", "state", "last", "seen"]
    assert row.split() == ["m1", "meter", "http", "-", "-"]
    assert header.index("type") == row.index("meter")
    latest = cli(api.url, "latest", "m1")
    assert latest.exit_code == 0, latest.output
    fields = dict(line.split(maxsplit=1) for line in latest.stdout.splitlines()[1:])
    assert fields["device_id"] == "m1"
    assert fields["power_kw"] == "2.5"


def test_format_json_gives_the_servers_answers(api: ApiServer, meter: DerimClient) -> None:
    """With --format json, health, devices and latest print the API's own JSON."""
    health = json.loads(cli(api.url, "health", "--format", "json").stdout)
    assert health["ingest"]["received"] == 2
    assert health["grid_links"] == {}
    devices = json.loads(cli(api.url, "devices", "--format", "json").stdout)
    assert [(d["id"], d["device_type"], d["name"]) for d in devices] == [("m1", "meter", "Meter")]
    latest = json.loads(cli(api.url, "latest", "m1", "--format", "json").stdout)
    assert latest["power_kw"] == 2.5


def test_unknown_device_is_one_line_and_status_1(api: ApiServer, meter: DerimClient) -> None:
    """latest, commands and command for a device that does not exist: not found, named."""
    for args in (["latest", "ghost"], ["commands", "ghost"], ["command", "ghost", "connect"]):
        result = cli(api.url, *args)
        assert result.exit_code == 1, args
        assert result.stderr == "Error: not found: unknown device 'ghost'\n", args
        assert result.stdout == ""


def stream_while_ingesting(api: ApiServer, client: DerimClient, *args: str) -> Result:
    """Run ``stream ARGS`` while m1 sends a reading every 50 ms until the command returns."""
    with ThreadPoolExecutor(1) as pool:
        running: Future[Result] = pool.submit(cli, api.url, "stream", *args)
        power = 0.0
        while not running.done():
            power += 1
            client.ingest([reading(power)])
            threading.Event().wait(0.05)
        return running.result()


def test_stream_prints_count_live_messages_then_exits(api: ApiServer, meter: DerimClient) -> None:
    """stream --count N stops after N messages: as text, one line per reading of m1 (which
    pushes its readings, so has no connection events); as JSON, one message per line."""
    text = stream_while_ingesting(api, meter, "--device", "m1", "--count", "1")
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines
    assert all(" telemetry  m1  power_kw=" in line for line in lines), lines
    as_json = stream_while_ingesting(
        api, meter, "--device", "m1", "--count", "3", "--format", "json"
    )
    assert as_json.exit_code == 0, as_json.output
    messages = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(messages) == 3
    assert {m["type"] for m in messages} <= {"telemetry", "event"}
    records = [r for m in messages if m["type"] == "telemetry" for r in m["records"]]
    assert records
    assert {r["device_id"] for r in records} == {"m1"}


@pytest.fixture
async def battery() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=512).start()
    yield server
    await server.stop()


def register_battery(url: str, battery: RegisterServer) -> None:
    """Register the Modbus battery ``bat`` (4 kW, shipped profile generic_battery)."""
    connection = {"protocol": "modbus", "host": "127.0.0.1", "port": battery.port,
                  "unit_id": UNIT, "profile": "generic_battery", "poll_interval_s": 5,
                  "timeout_s": 10}  # fmt: skip
    with DerimClient(url, timeout_s=10) as client:
        client.create_device({"id": "bat", "device_type": "battery", "rated_power_kw": 4.0,
                              "connection": connection})  # fmt: skip


async def answer_with(battery: RegisterServer, handle: Any) -> None:
    """Serve the battery's requests with ``handle`` from now on (pymodbus binds it at start)."""
    await battery.stop()
    battery.unit.handle = handle  # type: ignore[method-assign]
    await battery.start()


async def run_cli(url: str, *args: str) -> Result:
    """``cli`` in a thread, so the battery (served by this event loop) can answer."""
    return await asyncio.to_thread(cli, url, *args)


async def test_command_is_acknowledged_listed_and_refusals_exit_1(
    api: ApiServer, battery: RegisterServer
) -> None:
    """A setpoint is written to the battery and printed acknowledged; commands lists it (table
    and JSON); an over-rating value (422) and a Modbus exception (409) are one error line and
    status 1."""
    await asyncio.to_thread(register_battery, api.url, battery)
    sent = await run_cli(api.url, "command", "bat", "set_active_power", "--value", "-2.5")
    assert sent.exit_code == 0, sent.output
    rows = dict(line.split(maxsplit=1) for line in sent.stdout.splitlines()[1:])
    assert rows["status"] == "acknowledged"
    assert rows["value"] == "-2.5 kW"
    assert "read back" in rows["message"]
    assert battery.writes == [(300, [(-250) & 0xFFFF])]
    listed = await run_cli(api.url, "commands", "bat")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split()[:6] == ["command_id", "requested", "command", "value", "source", "status"]
    assert row.split()[0] == rows["command_id"]
    assert row.split()[2:7] == ["set_active_power", "-2.5", "kW", "operator", "acknowledged"]
    as_json = json.loads((await run_cli(api.url, "commands", "bat", "--format", "json")).stdout)
    assert [(r["command_id"], r["status"]) for r in as_json] == [
        (rows["command_id"], "acknowledged")
    ]
    too_much = await run_cli(api.url, "command", "bat", "set_active_power", "--value", "4.5")
    assert too_much.exit_code == 1
    assert too_much.stderr.startswith("Error: invalid request: value")
    assert len(too_much.stderr.splitlines()) == 1
    battery.exception = ExcCodes.ILLEGAL_VALUE
    refused = await run_cli(api.url, "command", "bat", "set_active_power", "--value", "1")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: the server answered 409: ")
    assert "exception 3" in refused.stderr
    assert len(battery.writes) == 1


async def test_a_write_the_device_does_not_keep_is_printed_failed_with_status_1(
    api: ApiServer, battery: RegisterServer
) -> None:
    """A battery that clears each write reads back 0: the record ends failed, is printed with
    the read-back message, and the command exits with status 1."""
    original = battery.unit.handle

    async def forgetful(function_code: int, start: int, address: int, count: int,
                        current: list[int], values: Any) -> ExcCodes | None:  # fmt: skip
        answer = await original(function_code, start, address, count, current, values)
        if values is not None:
            battery.unit.set(address, [0] * count)  # lands before the read-back
        return answer

    await answer_with(battery, forgetful)
    await asyncio.to_thread(register_battery, api.url, battery)
    result = await run_cli(
        api.url, "command", "bat", "set_active_power", "--value", "2", "--format", "json"
    )
    assert result.exit_code == 1
    record = json.loads(result.stdout)
    assert record["status"] == "failed"
    assert "reads back" in record["message"]


@pytest.fixture
def slow_api(tmp_path: Path) -> Iterator[ApiServer]:
    """The API answering a command at ``sent`` (202) when the device takes over 0.1 s."""
    server = ApiServer(tmp_path, control_wait_s=0.1).start()
    yield server
    server.stop()


async def test_wait_follows_a_command_to_its_end_and_no_wait_does_not(
    slow_api: ApiServer, battery: RegisterServer
) -> None:
    """While the battery holds its writes, --no-wait prints the record at sent (status 0);
    --wait keeps asking until the device answers and prints it acknowledged."""
    release = asyncio.Event()
    original = battery.unit.handle

    async def held(function_code: int, start: int, address: int, count: int,
                   current: list[int], values: Any) -> ExcCodes | None:  # fmt: skip
        if values is not None:
            await release.wait()
        return await original(function_code, start, address, count, current, values)

    await answer_with(battery, held)
    await asyncio.to_thread(register_battery, slow_api.url, battery)
    args = ("command", "bat", "set_active_power", "--value", "1", "--format", "json")
    early = await run_cli(slow_api.url, *args, "--no-wait")
    assert early.exit_code == 0, early.output
    assert json.loads(early.stdout)["status"] == "sent"
    waiting = asyncio.create_task(run_cli(slow_api.url, *args, "--wait"))
    entries: list[AuditEntry] = []
    with DerimClient(slow_api.url) as client:

        async def both_audited() -> bool:
            """The second command's entry is there: the API has answered it."""
            nonlocal entries
            entries = await asyncio.to_thread(client.audit_log, action="control")
            return len(entries) >= 2

        await until_async(both_audited)
    assert [entry.result for entry in entries] == ["sent", "sent"]
    release.set()
    finished = await waiting
    assert finished.exit_code == 0, finished.output
    assert json.loads(finished.stdout)["status"] == "acknowledged"


def test_a_server_that_is_not_there_is_one_line_and_status_1(tmp_path: Path) -> None:
    """Nothing listening at --url: one line naming the URL, status 1, no traceback."""
    (port,) = free_ports(1)
    result = derim(tmp_path, "remote", "--url", f"http://127.0.0.1:{port}", "devices")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: cannot reach the DERIM server at http://127.0.0.1:{port} "
        "([Errno 111] Connection refused); is it running? (--url, DERIM_URL)"
    ]


def test_keys_come_from_the_environment_and_a_missing_one_is_explained(tmp_path: Path) -> None:
    """With auth on, DERIM_URL and DERIM_API_KEY are enough to list devices; without the key
    the server's 401 is one line saying how to pass one, status 1."""
    store = KeyStore(tmp_path / "keys.db")
    store.open_sync()
    _, token = store.create("cli-test", Role.VIEWER)
    store.close()
    server = ApiServer(tmp_path, auth_enabled=True).start()
    try:
        allowed = derim(tmp_path, "remote", "devices", DERIM_URL=server.url, DERIM_API_KEY=token)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.split() == ["id", "type", "protocol", "state", "last", "seen"]
        refused = derim(tmp_path, "remote", "devices", DERIM_URL=server.url)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "Error: refused (401): an API key is required: Authorization: Bearer <key> or "
            "X-API-Key: <key>; pass --api-key or set DERIM_API_KEY"
        ]
        usage = derim(tmp_path, "remote", "command", "bat", "fly", DERIM_URL=server.url)
        assert usage.returncode == 2
        assert "Invalid value for 'COMMAND'" in usage.stderr
    finally:
        server.stop()
