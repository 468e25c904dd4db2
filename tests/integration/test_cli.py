"""The ``derim`` command end to end: devices, CSV import/export, and ``derim serve`` over HTTP."""

from __future__ import annotations

import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from certificates import make_certificates
from influxd import free_ports

DERIM = [sys.executable, "-m", "derim.cli"]


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DERIM_DATA_DIR": str(data_dir), "DERIM_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [*DERIM, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_devices_import_export_round_trip(tmp_path: Path) -> None:
    """A CSV imported for a registered device exports back with UTC timestamps."""
    assert run(tmp_path, "devices", "add", "m1", "--type", "meter").returncode == 0
    assert "m1" in run(tmp_path, "devices", "list").stdout
    source = tmp_path / "in.csv"
    source.write_text(
        "timestamp,power_kw,energy_import_kwh\n"
        "2024-01-01T01:00:00+01:00,1.5,10\n"
        "2024-01-01T00:01:00Z,2.5,\n"
    )
    imported = run(tmp_path, "import", str(source), "--device-id", "m1")
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 readings" in imported.stdout
    exported = run(tmp_path, "export", "m1", "--start", "2023-12-31", "--end", "2024-01-02")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines() == [
        "timestamp,power_kw,energy_import_kwh",
        "2024-01-01T00:00:00.000Z,1.5,10.0",
        "2024-01-01T00:01:00.000Z,2.5,",
    ]


def test_import_stops_at_a_bad_row_naming_line_and_field(tmp_path: Path) -> None:
    """An invalid cell aborts the import with its line number and field."""
    run(tmp_path, "devices", "add", "b1", "--type", "battery")
    source = tmp_path / "bad.csv"
    source.write_text("device_id,timestamp,soc_percent\nb1,2024-01-01T00:00:00Z,140\n")
    result = run(tmp_path, "import", str(source))
    assert result.returncode != 0
    assert "line 2" in result.stderr
    assert "soc_percent" in result.stderr


def test_remove_unknown_device_fails_clearly(tmp_path: Path) -> None:
    """Removing a device that does not exist is an error naming it."""
    result = run(tmp_path, "devices", "remove", "ghost")
    assert result.returncode != 0
    assert "ghost" in result.stderr


def test_serve_answers_health_and_shuts_down(tmp_path: Path) -> None:
    """``derim serve`` starts the API on the configured port and stops on SIGTERM."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DERIM_DATA_DIR": str(tmp_path),
        "APP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([*DERIM, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("derim serve did not come up")
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), "uvicorn re-raises SIGTERM after shutdown"
    assert "Traceback" not in errors, errors
    assert (tmp_path / "derim.db").exists()


def test_keys_are_created_listed_and_revoked_and_serve_speaks_tls(tmp_path: Path) -> None:
    """``derim keys`` prints a token once and lists keys without secrets; ``derim serve`` with
    a certificate answers over HTTPS and honours the key until it is revoked."""
    created = run(tmp_path, "keys", "create", "--role", "viewer", "--name", "grafana")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    key_id = token.split("_")[1]
    listed = run(tmp_path, "keys", "list").stdout
    assert key_id in listed
    assert "grafana" in listed
    assert token.split("_", 2)[2] not in listed
    ca, cert, key = make_certificates(tmp_path)
    (port,) = free_ports(1)
    env = {**os.environ, "DERIM_DATA_DIR": str(tmp_path), "DERIM_PORT": str(port),
           "DERIM_LOG_LEVEL": "WARNING", "DERIM_OCPP_ENABLED": "false",
           "DERIM_API_TLS_CERT": str(cert), "DERIM_API_TLS_KEY": str(key)}  # fmt: skip
    process = subprocess.Popen([*DERIM, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        trust = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=5) as web:
            deadline = time.monotonic() + 30
            while True:
                try:
                    web.get("/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        pytest.fail("derim serve did not come up over TLS")
                    time.sleep(0.2)
            headers = {"Authorization": f"Bearer {token}"}
            assert web.get("/api/v1/devices", headers=headers).status_code == 200
            assert web.get("/api/v1/devices").status_code == 401
            assert run(tmp_path, "keys", "revoke", key_id).returncode == 0
            assert web.get("/api/v1/devices", headers=headers).status_code == 401
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert run(tmp_path, "devices", "add", "pv-9", "--type", "solar_pv").returncode == 0
    audit = sqlite3.connect(tmp_path / "audit.db")
    trail = audit.execute("SELECT actor, action, target FROM audit ORDER BY id").fetchall()
    audit.close()
    assert trail == [
        ("cli", "key.create", key_id),
        ("cli", "key.revoke", key_id),
        ("cli", "device.create", "pv-9"),
    ]


def test_twin_train_backtests_and_stores_models_for_stored_readings(tmp_path: Path) -> None:
    """``derim twin train`` on 60 days of imported household load (SimBench H0-A) backtests the
    models, stores a version of each, marks the better one as served and shows progress."""
    from derim.twin.datasets import simbench_load

    assert run(tmp_path, "devices", "add", "home", "--type", "load").returncode == 0
    load = simbench_load("H0-A").series.iloc[: 60 * 96] / -1000.0
    end = pd.Timestamp.now(tz="UTC").floor("15min")
    load.index = pd.date_range(end - pd.Timedelta(days=60), periods=len(load), freq="15min")
    source = tmp_path / "home.csv"
    load.rename("power_kw").rename_axis("timestamp").to_csv(
        source, date_format="%Y-%m-%dT%H:%M:%SZ"
    )
    assert run(tmp_path, "import", str(source), "--device-id", "home").returncode == 0
    trained = run(
        tmp_path, "twin", "train", "home", "--days", "61", "--models", "persistence,moving_average"
    )
    assert trained.returncode == 0, trained.stderr
    assert "serving moving_average by default for home power_kw" in trained.stdout
    assert "training" in trained.stderr
    stored = tmp_path / "twin" / "home" / "power_kw"
    assert (stored / "moving_average" / "v1.pkl").exists()
    assert (stored / "persistence" / "v1.json").exists()
    refused = run(tmp_path, "twin", "train", "nobody")
    assert refused.returncode != 0
    assert "unknown device 'nobody'" in refused.stderr
