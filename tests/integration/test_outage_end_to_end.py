"""End to end over HTTP with InfluxDB: an outage is spooled, reported, and replayed in order."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from api_server import ApiServer
from influxd import InfluxServer

T0 = datetime(2024, 7, 1, tzinfo=UTC)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_influx_outage_is_spooled_then_replayed(tmp_path: Path) -> None:
    """Readings posted while InfluxDB is down are accepted, counted, and stored once it returns."""
    influx = InfluxServer(tmp_path / "influx")
    influx.start()
    api = ApiServer(
        tmp_path / "data",
        storage_backend="influxdb",
        influxdb_url=influx.url,
        influxdb_database="outage",
        spool_retry_s=0.2,
    ).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            assert client.post("/api/v1/devices", json={"id": "m1", "device_type": "meter"})
            readings = [
                {
                    "device_id": "m1",
                    "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
                    "power_kw": float(i),
                }
                for i in range(300)
            ]
            assert client.post("/api/v1/telemetry", json=readings[:100]).status_code == 202
            influx.stop()
            for k in (100, 200):
                response = client.post("/api/v1/telemetry", json=readings[k : k + 100])
                assert response.status_code == 202, "accepted into the durable spool"
            health = client.get("/health").json()
            assert health["status"] == "degraded"
            assert health["spool_depth"] == 200
            assert health["ingest"]["dropped"] == 0
            influx.start()
            wait_for(lambda: client.get("/health").json()["spool_depth"] == 0)
            page = client.get(
                "/api/v1/telemetry/m1",
                params={
                    "start": T0.isoformat(),
                    "end": (T0 + timedelta(hours=1)).isoformat(),
                    "fields": "power_kw",
                },
            ).json()
            assert [r["power_kw"] for r in page["records"]] == [float(i) for i in range(300)]
            assert client.get("/health").json()["status"] == "ok"
    finally:
        api.stop()
        influx.stop()
