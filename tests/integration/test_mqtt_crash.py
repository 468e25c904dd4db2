"""``derim serve`` killed with SIGKILL in the middle of a QoS 1 stream, then started again:
every message the broker delivered is stored, none twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from mqtt_helpers import MAPPING, T0_MS, Publisher, stream

from derim.sim.broker import Mosquitto, free_port

TOTAL = 6000


class Serve:
    """``derim serve`` in its own process, with MQTT ingestion from ``broker``."""

    def __init__(self, broker: Mosquitto, data_dir: Path, mapping: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {
            "DERIM_DATA_DIR": str(data_dir),
            "DERIM_MQTT_URL": broker.url,
            "DERIM_MQTT_MAPPINGS": json.dumps([str(mapping)]),
            "DERIM_MQTT_CLIENT_ID": "derim-crash-test",
            "DERIM_LOG_LEVEL": "WARNING",
            "DERIM_AUTH_ENABLED": "false",  # this test is about MQTT; test_auth covers keys
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "derim.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def health(self) -> dict[str, object] | None:
        try:
            answer: dict[str, object] = httpx.get(f"{self.url}/health", timeout=2).json()
        except httpx.HTTPError:
            return None
        return answer

    def mqtt(self, key: str) -> object:
        health = self.health()
        mqtt = None if health is None else health.get("mqtt")
        return mqtt.get(key) if isinstance(mqtt, dict) else None

    def wait(self, condition: str, check: object, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                raise AssertionError(f"derim serve exited: {err.decode(errors='replace')}")
            if callable(check) and check():
                return
            time.sleep(0.05)
        raise AssertionError(f"derim serve: not {condition} after {timeout_s} s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING)
    return path


@pytest.fixture
def serve_factory() -> Iterator[list[Serve]]:
    """Instances a test starts, stopped at its end."""
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


def stored_times(serve: Serve, device_id: str) -> list[int]:
    """Every stored timestamp (ms) of ``device_id``, following cursors."""
    times: list[int] = []
    params: dict[str, str | int] = {
        "start": "2025-12-31T00:00:00Z",
        "end": "2026-01-02T00:00:00Z",
        "fields": "power_kw",
        "limit": 100_000,
    }
    while True:
        page = httpx.get(f"{serve.url}/api/v1/telemetry/{device_id}", params=params, timeout=30)
        page.raise_for_status()
        body = page.json()
        times += [_ms(row["timestamp"]) for row in body["records"]]
        cursor = body.get("next_cursor")
        if not cursor:
            return times
        params["cursor"] = cursor


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_sigkill_mid_stream_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, mapping: Path, serve_factory: list[Serve]
) -> None:
    """6,000 QoS 1 messages; SIGKILL once 500 are stored; the broker keeps the rest (and the
    unacknowledged ones) for the session, the restarted instance stores them: every device
    timestamp exactly once."""
    data_dir = tmp_path / "data"
    first = Serve(mosquitto, data_dir, mapping)
    serve_factory.append(first)
    first.wait("subscribed", lambda: first.mqtt("connected") is True)
    time.sleep(0.5)  # the SUBACK follows the CONNACK
    publisher = Publisher(mosquitto, "crash-publisher")
    sending = threading.Thread(target=publisher.send, args=(stream("k1", range(TOTAL)),))
    sending.start()
    first.wait("ingesting", lambda: (first.mqtt("records") or 0) > 500)  # type: ignore[operator]
    first.kill()
    sending.join(timeout=60)
    publisher.close()
    second = Serve(mosquitto, data_dir, mapping)
    serve_factory.append(second)
    second.wait("serving", lambda: second.mqtt("connected") is True)
    deadline = time.monotonic() + 60
    times: list[int] = []
    while time.monotonic() < deadline:
        times = stored_times(second, "k1")
        if len(times) >= TOTAL:
            break
        time.sleep(0.2)
    assert sorted(times) == [T0_MS + i * 1000 for i in range(TOTAL)]
