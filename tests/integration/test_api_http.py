"""The REST API over real HTTP: devices, ingest, queries, errors, health and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import ApiServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = ApiServer(tmp_path_factory.mktemp("api"), max_body_bytes=MAX_BODY).start()
    yield api
    api.stop()


@pytest.fixture
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def add_device(client: httpx.Client, device_id: str, device_type: str, **extra: Any) -> None:
    response = client.post(
        "/api/v1/devices", json={"id": device_id, "device_type": device_type, **extra}
    )
    assert response.status_code == 201, response.text


def test_device_crud_round_trip(client: httpx.Client) -> None:
    """Create, read, patch, list by group and delete a device."""
    add_device(client, "crud-1", "battery", rated_power_kw=5, groups=["g1"])
    assert client.post("/api/v1/devices", json={"id": "crud-1"}).status_code == 409
    got = client.get("/api/v1/devices/crud-1").json()
    assert got["rated_power_kw"] == 5
    assert got["mrid"]
    patched = client.patch("/api/v1/devices/crud-1", json={"name": "Garage battery"}).json()
    assert patched["name"] == "Garage battery"
    assert patched["groups"] == ["g1"]
    listed = client.get("/api/v1/devices", params={"group": "g1"}).json()
    assert [d["id"] for d in listed] == ["crud-1"]
    assert client.delete("/api/v1/devices/crud-1").status_code == 204
    assert client.get("/api/v1/devices/crud-1").status_code == 404


def test_ingest_then_query_with_pagination(client: httpx.Client) -> None:
    """Readings posted in batches come back complete through cursor pages."""
    add_device(client, "pv-q", "solar_pv")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    body = [
        {"device_id": "pv-q", "timestamp": (t0 + timedelta(seconds=i)).isoformat(), "power_kw": i}
        for i in range(2500)
    ]
    for k in range(0, 2500, 500):
        response = client.post("/api/v1/telemetry", json=body[k : k + 500])
        assert response.status_code == 202
        assert response.json() == {"accepted": 500}
    params: dict[str, Any] = {
        "start": "2024-05-01T00:00:00Z",
        "end": "2024-05-02T00:00:00Z",
        "limit": 1000,
    }
    values: list[float] = []
    for _ in range(10):
        page = client.get("/api/v1/telemetry/pv-q", params=params)
        assert page.status_code == 200
        data = page.json()
        values += [r["power_kw"] for r in data["records"]]
        if data["next_cursor"] is None:
            assert "Link" not in page.headers
            break
        assert page.headers["X-Next-Cursor"] == data["next_cursor"]
        params["cursor"] = data["next_cursor"]
    assert values == [float(i) for i in range(2500)]


def test_query_downsampled_and_csv(client: httpx.Client) -> None:
    """every/agg downsample; format=csv returns the same rows as CSV."""
    add_device(client, "m-ds", "meter")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    body = [
        {"device_id": "m-ds", "timestamp": (t0 + timedelta(minutes=i)).isoformat(), "power_kw": 2}
        for i in range(120)
    ]
    assert client.post("/api/v1/telemetry", json=body).status_code == 202
    params = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-01T02:00:00Z"}
    hourly = client.get(
        "/api/v1/telemetry/m-ds", params={**params, "every": "1h", "agg": "sum"}
    ).json()
    assert [r["power_kw"] for r in hourly["records"]] == [120.0, 120.0]
    csv_text = client.get("/api/v1/telemetry/m-ds", params={**params, "format": "csv"}).text
    lines = csv_text.strip().splitlines()
    assert lines[0] == "timestamp,power_kw"
    assert len(lines) == 121


def test_latest_and_fleet_summary(client: httpx.Client) -> None:
    """latest shows the newest reading; the fleet summary adds current power by type/group."""
    add_device(client, "bat-f", "battery", groups=["site-f"])
    add_device(client, "pv-f", "solar_pv", groups=["site-f"])
    now = datetime.now(UTC)
    readings = [
        {"device_id": "bat-f", "timestamp": now.isoformat(), "power_kw": -2.0, "soc_percent": 40},
        {"device_id": "pv-f", "timestamp": now.isoformat(), "power_kw": 5.5},
        {"device_id": "pv-f", "timestamp": (now - timedelta(hours=1)).isoformat(), "power_kw": 1},
    ]
    assert client.post("/api/v1/telemetry", json=readings).status_code == 202
    latest = client.get("/api/v1/telemetry/pv-f/latest").json()
    assert latest["power_kw"] == 5.5
    summary = client.get("/api/v1/fleet/summary").json()
    assert summary["by_group"]["site-f"] == {"devices": 2, "reporting": 2, "power_kw": 3.5}
    assert summary["by_type"]["solar_pv"]["power_kw"] >= 5.5


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            [{"device_id": "val-b", "timestamp": "2024-01-01T00:00:00Z", "soc_percent": 101}],
            422,
            "body[0].soc_percent",
        ),
        (
            [{"device_id": "val-b", "timestamp": "2024-01-01T00:00:00Z", "voltage_v": -230}],
            422,
            "body[0].voltage_v",
        ),
        ([{"device_id": "val-b", "timestamp": "not a time"}], 422, "body[0].timestamp"),
        (
            [{"device_id": "val-b", "timestamp": "2024-01-01T00:00:00Z", "bogus": 1}],
            422,
            "body[0].bogus",
        ),
        ([{"timestamp": "2024-01-01T00:00:00Z"}], 422, "body[0].device_id"),
        ({"device_id": "val-b"}, 422, "body"),
        ([{"device_id": "nobody", "timestamp": "2024-01-01T00:00:00Z"}], 404, None),
    ],
)
def test_bad_readings_get_clear_errors(
    client: httpx.Client, body: Any, status: int, field: str | None
) -> None:
    """Invalid readings are refused with the status and the field at fault."""
    if client.get("/api/v1/devices/val-b").status_code == 404:
        add_device(client, "val-b", "battery")
    response = client.post("/api/v1/telemetry", json=body)
    assert response.status_code == status, response.text
    if field:
        assert field in {e["field"] for e in response.json()["errors"]}


def test_nan_in_raw_json_and_malformed_json_are_422(client: httpx.Client) -> None:
    """NaN literals and broken JSON are validation errors, not 500s."""
    add_device(client, "nan-1", "meter")
    nan = b'[{"device_id": "nan-1", "timestamp": "2024-01-01T00:00:00Z", "power_kw": NaN}]'
    assert client.post("/api/v1/telemetry", content=nan).status_code == 422
    assert client.post("/api/v1/telemetry", content=b'[{"device_id":').status_code == 422


def test_oversized_bodies_are_413(client: httpx.Client) -> None:
    """Bodies over the configured maximum are refused, declared or streamed."""
    big = b"[" + b" " * MAX_BODY + b"]"
    assert client.post("/api/v1/telemetry", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    assert client.post("/api/v1/telemetry", content=chunks()).status_code == 413
    huge_id = {"id": "x" * (MAX_BODY // 2)}
    assert client.post("/api/v1/devices", json=huge_id).status_code == 422


def test_query_parameter_errors_name_the_parameter(client: httpx.Client) -> None:
    """Bad query parameters are 422 naming the parameter; unknown devices 404."""
    add_device(client, "qp-1", "meter")
    cases = {
        "start": {"start": "yesterday-ish"},
        "fields": {"fields": "power_kw,warp_factor"},
        "every": {"every": "7m"},
        "cursor": {"cursor": "!!!"},
        "end": {"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"},
    }
    for name, params in cases.items():
        response = client.get("/api/v1/telemetry/qp-1", params=params)
        assert response.status_code == 422, (name, response.text)
        assert any(name in e["field"] for e in response.json()["errors"]), response.text
    assert client.get("/api/v1/telemetry/ghost").status_code == 404


def test_health_and_metrics(client: httpx.Client) -> None:
    """/health reports version, storage and spool; /metrics is Prometheus text."""
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["storage"]["backend"] == "sqlite"
    assert health["spool_depth"] == 0
    assert health["ingest"]["dropped"] == 0
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "derim_ingest_records_dropped_total 0.0" in metrics.text
    assert client.get("/docs").status_code == 200
    assert "/api/v1/telemetry" in client.get("/openapi.json").json()["paths"]


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
reading_like = st.fixed_dictionaries(
    {"device_id": st.sampled_from(["fz-1", "nobody", "", "x" * 200])},
    optional={
        "timestamp": st.text(max_size=30) | st.just("2024-01-01T00:00:00Z") | st.integers(),
        "power_kw": json_values,
        "soc_percent": json_values,
        "state": json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values | st.lists(reading_like, max_size=5))
def test_fuzzed_ingest_bodies_never_500(client: httpx.Client, body: Any) -> None:
    """Whatever JSON arrives, the answer is a 2xx/4xx, never a server error."""
    if client.get("/api/v1/devices/fz-1").status_code == 404:
        add_device(client, "fz-1", "battery")
    response = client.post("/api/v1/telemetry", content=json.dumps(body, allow_nan=True))
    assert response.status_code < 500, response.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["id", "device_type", "location", "groups", "connection", "tags"]),
        json_values,
    )
)
def test_fuzzed_device_bodies_never_500(client: httpx.Client, body: Any) -> None:
    """Device creation answers 201/409/422 for any JSON object."""
    response = client.post("/api/v1/devices", content=json.dumps(body, allow_nan=True))
    assert response.status_code in {201, 409, 422}, response.text


def test_data_dir_holds_the_database(server: ApiServer) -> None:
    """The embedded default keeps telemetry and registry in <data_dir>/derim.db."""
    assert Path(server.settings.database_path).exists()
