"""The image's start-up script (deploy/entrypoint.py) run directly on this machine, with the
environment compose would give it: it validates, waits for its backends, then serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from influxd import InfluxServer, free_ports

from derim.sim.broker import Mosquitto

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.py"
START_TIMEOUT_S = 60.0


def compose_env(data_dir: Path, port: int, ocpp_port: int, **extra: str) -> dict[str, str]:
    """The variables the compose file sets, on loopback ports, plus ``extra``; nothing else
    of this process's DERIM settings leaks in."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return base | {
        "DERIM_ENVIRONMENT": "production",
        "DERIM_HOST": "127.0.0.1",
        "DERIM_PORT": str(port),
        "DERIM_DATA_DIR": str(data_dir),
        "DERIM_LOG_LEVEL": "INFO",
        "DERIM_RETENTION_DAYS": "30",
        "DERIM_OCPP_PORT": str(ocpp_port),
        **extra,
    }


def entrypoint(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start the script as the image does."""
    return subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def stop_after() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes to SIGTERM (and reap) when the test ends."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def wait_for_health(process: subprocess.Popen[str], port: int) -> dict[str, object]:
    """``/health`` once it answers; fails with the script's output if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, errors = process.communicate()
            pytest.fail(f"entrypoint exited with {process.returncode}:\n{errors[-3000:]}")
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            health: dict[str, object] = reply.json()
            return health
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the entrypoint did not serve /health in time")


def test_serves_sqlite_with_the_compose_settings_and_stops_on_sigterm(
    tmp_path: Path, stop_after: list[subprocess.Popen[str]]
) -> None:
    """With SQLite it waits for nothing, serves on the configured port with the configured data
    dir, OCPP port and JSON logs (production), answers its own --health probe, and exits
    cleanly on SIGTERM."""
    port, ocpp_port = free_ports(2)
    env = compose_env(tmp_path, port, ocpp_port)
    process = entrypoint(env)
    stop_after.append(process)
    health = wait_for_health(process, port)
    assert health["status"] == "ok"
    assert health["storage"]["backend"] == "sqlite"  # type: ignore[index]
    assert health["ocpp"]["port"] == ocpp_port  # type: ignore[index]
    assert (tmp_path / "derim.db").is_file()
    mapped = Path(f"/proc/{process.pid}/maps").read_text()
    for library in ("torch", "numpy", "pandas", "scipy", "lightgbm"):
        assert f"/site-packages/{library}/" not in mapped, f"{library} loaded at start"
    probe = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "--health"], env=env, capture_output=True, timeout=30
    )
    assert probe.returncode == 0, probe.stderr
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), errors[-3000:]
    assert "Traceback" not in errors
    logged = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    assert logged, "production logs are JSON lines"
    down = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "--health"], env=env, capture_output=True, timeout=30
    )
    assert down.returncode == 1


def test_waits_for_influxdb_and_the_broker_then_uses_them(
    tmp_path: Path,
    influxd: InfluxServer,
    mosquitto: Mosquitto,
    stop_after: list[subprocess.Popen[str]],
) -> None:
    """With InfluxDB and MQTT configured it checks both answer, then stores in InfluxDB and
    connects to the broker."""
    port, ocpp_port = free_ports(2)
    env = compose_env(
        tmp_path,
        port,
        ocpp_port,
        DERIM_STORAGE_BACKEND="influxdb",
        DERIM_INFLUXDB_URL=influxd.url,
        DERIM_INFLUXDB_DATABASE="entrypoint_test",
        DERIM_MQTT_URL=mosquitto.url,
        DERIM_MQTT_CLIENT_ID="entrypoint-test",
    )
    process = entrypoint(env, "--wait-s", "20")
    stop_after.append(process)
    health = wait_for_health(process, port)
    assert health["storage"] == health["storage"] | {"backend": "influxdb", "reachable": True}  # type: ignore[operator]
    deadline = time.monotonic() + 20
    while not health["mqtt"]["connected"]:  # type: ignore[index]
        assert time.monotonic() < deadline, health["mqtt"]
        time.sleep(0.1)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert "InfluxDB at" in errors
    assert "MQTT broker at" in errors


def test_gives_up_when_influxdb_never_answers(tmp_path: Path) -> None:
    """An InfluxDB that does not answer within --wait-s ends the script with status 3, naming
    it, before anything is served."""
    port, ocpp_port, dead = free_ports(3)
    env = compose_env(
        tmp_path,
        port,
        ocpp_port,
        DERIM_STORAGE_BACKEND="influxdb",
        DERIM_INFLUXDB_URL=f"http://127.0.0.1:{dead}",
    )
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "--wait-s", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert f"InfluxDB at http://127.0.0.1:{dead}" in result.stderr
    assert not (tmp_path / "derim.db").exists()


def test_invalid_settings_fail_before_waiting(tmp_path: Path) -> None:
    """A bad variable ends the script with status 2 and the field's name."""
    port, ocpp_port = free_ports(2)
    env = compose_env(tmp_path, port, ocpp_port, DERIM_RETENTION_DAYS="-5")
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "retention_days" in result.stderr
