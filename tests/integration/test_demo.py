"""``derim demo`` end to end: within a minute or so it serves the dashboard, live data from the
simulated fleet, a forecast trained at start and the anomaly its history carries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from influxd import free_ports


def wait_for(
    check: Callable[[], bool], what: str, timeout_s: float, process: subprocess.Popen[str]
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout_s`` or when the demo
    exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            pytest.fail(f"the demo did not show {what} within {timeout_s:.0f} s")
        time.sleep(0.5)


def test_the_demo_shows_live_data_a_forecast_and_an_anomaly(tmp_path: Path) -> None:
    """The dashboard page loads, the polled PV inverter reports live, the forecast of pv-roof-2
    is served, and the household meter's stuck stretch is an anomaly within the last day (the
    span the dashboard charts)."""
    (port,) = free_ports(1)
    env = {**os.environ, "DERIM_DATA_DIR": str(tmp_path), "DERIM_OCPP_PORT": "0",
           "DERIM_LOG_LEVEL": "WARNING"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "derim.cli", "demo", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200,
            "the API",
            60,
            process,
        )
        page = httpx.get(f"{base}/", timeout=5)
        assert page.status_code == 200
        assert "DERIM" in page.text
        live = f"{base}/api/v1/telemetry/pv-roof-1/latest"
        wait_for(lambda: httpx.get(live, timeout=5).is_success, "live data", 30, process)
        wait_for(
            lambda: httpx.get(f"{base}/api/v1/forecast/pv-roof-2", timeout=5).status_code == 200,
            "a forecast", 90, process,
        )  # fmt: skip
        forecast = httpx.get(f"{base}/api/v1/forecast/pv-roof-2", timeout=5).json()
        assert len(forecast["points"]) == 96
        since = (datetime.now(UTC) - timedelta(days=1)).isoformat()  # the dashboard's span
        anomalies = httpx.get(
            f"{base}/api/v1/twin/load-house/anomalies", params={"start": since}, timeout=30
        ).json()
        assert "stuck" in {a["kind"] for a in anomalies}, anomalies
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert "Demo API key (operator): derim_" in output
    assert "Anomaly on load-house: stuck" in output
