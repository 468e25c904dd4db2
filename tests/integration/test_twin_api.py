"""The twin over HTTP: stored PV readings (Greensboro's real TMY3 weather) are backtested and
trained on in the background, served as forecasts, scanned for an injected outage, and used in
what-if simulations and a battery dispatch sent as a schedule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from api_server import ApiServer
from modbus_server import RegisterServer

from derim.client import AsyncDerimClient, ResourceNotFoundError
from derim.storage.base import StoredForecastPoint
from derim.storage.sqlite import SQLiteStore
from derim.twin.datasets import greensboro_pv, replay, simbench_load
from twin_helpers import MODEL, recent_readings, save_quick_model

DAYS = 60
DEVICE = "pv-gso"
MODELS = ["seasonal_daily", "clearsky_persistence", "gbm"]


def pv_readings(days: int, outage_day: pd.Timestamp) -> list[dict[str, Any]]:
    """The last ``days`` days to now, 15-min power (kW) from the same days of the TMY year,
    with output at zero from 14:00 to 19:00 UTC (09:00-14:00 local) on ``outage_day``."""
    end = pd.Timestamp.now(tz="UTC").floor("h")
    power = replay(greensboro_pv().series / 1000.0, end, days)
    index, values = power.index, power.to_numpy()
    outage = (index >= outage_day + pd.Timedelta(hours=14)) & (
        index < outage_day + pd.Timedelta(hours=19)
    )
    values = np.where(outage, 0.0, values)
    return [
        {"device_id": DEVICE, "timestamp": t.isoformat(), "power_kw": round(float(v), 4)}
        for t, v in zip(index, values, strict=True)
    ]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """An API with a PV device that has 60 days of readings and a trained set of models."""
    server = ApiServer(tmp_path_factory.mktemp("twin") / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            created = http.post("/api/v1/devices", json={
                "id": DEVICE, "device_type": "solar_pv", "rated_power_kw": 4.6,
                "location": {"latitude": 36.1, "longitude": -79.95}})  # fmt: skip
            assert created.status_code == 201, created.text
            readings = pv_readings(DAYS, outage_day())
            for k in range(0, len(readings), 2000):
                assert (
                    http.post("/api/v1/telemetry", json=readings[k : k + 2000]).status_code == 202
                )
            yield http
    finally:
        server.stop()


def outage_day() -> pd.Timestamp:
    """Midnight UTC two days ago."""
    return pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=2)


def train(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """Start a training job and wait for it to finish; the finished job."""
    started = client.post(f"/api/v1/twin/{DEVICE}/train", json=body)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/twin/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.5)
    raise AssertionError("training did not finish in 150 s")


def test_training_backtests_stores_versions_and_serves_the_best_model(client: httpx.Client) -> None:
    """Training runs in the background, stores each model with its backtest, chooses the model
    with the lowest MAE; the forecast endpoint serves it with P10 <= P50 <= P90 over 24 h; a
    second training makes version 2."""
    before = client.get(f"/api/v1/forecast/{DEVICE}")
    assert before.status_code == 404
    assert "train one" in before.json()["detail"]
    job = train(client, models=MODELS, days=DAYS, freq="15min")
    assert job["state"] == "succeeded", job
    maes = {info["model"]: info["backtest"]["mae"] for info in job["models"]}
    assert set(maes) == set(MODELS)
    assert job["selected"] == min(maes, key=maes.__getitem__)
    forecast = client.get(f"/api/v1/forecast/{DEVICE}", params={"horizon": "24h"})
    assert forecast.status_code == 200, forecast.text
    body = forecast.json()
    assert body["model"] == job["selected"]
    assert (body["freq"], body["horizon"]) == ("15min", "24h")
    assert len(body["points"]) == 96
    first = datetime.fromisoformat(body["points"][0]["timestamp"])
    assert abs(first - datetime.now(UTC)) < timedelta(minutes=16)
    assert all(p["p10"] <= p["p50"] <= p["p90"] for p in body["points"])
    assert max(p["p50"] for p in body["points"]) > 0.5
    chosen = client.get(f"/api/v1/forecast/{DEVICE}", params={"model": "seasonal_daily"}).json()
    assert chosen["model"] == "seasonal_daily"
    again = train(client, models=["seasonal_daily"], days=DAYS, freq="15min")
    assert again["models"][0]["version"] == 2
    listed = client.get(f"/api/v1/twin/{DEVICE}/models").json()
    assert {m["model"] for m in listed["models"]} == set(MODELS)


def test_forecast_requests_with_bad_parameters_are_refused(client: httpx.Client) -> None:
    """An unknown device is 404, a horizon over 168 h or not a duration is 422, a model never
    trained is 404, a training request for an unknown model is 422."""
    assert client.get("/api/v1/forecast/nobody").status_code == 404
    for horizon in ("200h", "soon", "-1h", "99999999999999d", "nan"):
        response = client.get(f"/api/v1/forecast/{DEVICE}", params={"horizon": horizon})
        assert response.status_code == 422, (horizon, response.text)
    assert client.get(f"/api/v1/forecast/{DEVICE}", params={"model": "lstm"}).status_code == 404
    refused = client.post(f"/api/v1/twin/{DEVICE}/train", json={"models": ["prophet"]})
    assert refused.status_code == 422
    assert "prophet" in refused.text


def test_an_outage_in_daylight_is_flagged_and_stored(client: httpx.Client) -> None:
    """The 5-hour daylight outage is returned as an outage anomaly with its times; night-time
    zeros are not flagged; a second scan returns the stored anomaly once."""
    day = outage_day()
    params = {
        "start": (day - pd.Timedelta(days=3)).isoformat(),
        "end": (day + pd.Timedelta(days=1)).isoformat(),
    }
    response = client.get(f"/api/v1/twin/{DEVICE}/anomalies", params=params)
    assert response.status_code == 200, response.text
    outages = [a for a in response.json() if a["kind"] == "outage"]
    assert len(outages) == 1, response.json()
    start = datetime.fromisoformat(outages[0]["start"])
    assert abs(start - (day + pd.Timedelta(hours=14)).to_pydatetime()) <= timedelta(hours=1)
    again = client.get(f"/api/v1/twin/{DEVICE}/anomalies", params=params).json()
    assert [a for a in again if a["kind"] == "outage"] == outages


def hourly_scenario(**changes: Any) -> dict[str, Any]:
    """A day from the next hour: 2 kW of load with a 6 kW peak for four hours."""
    start = (datetime.now(UTC) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    load = [2.0] * 8 + [6.0] * 4 + [2.0] * 12
    return {"start": start.isoformat(), "step_minutes": 60, "load_kw": load, **changes}


BATTERY = {"capacity_kwh": 10, "power_kw": 3, "initial_soc": 0.9, "strategy": "optimise"}


def test_what_if_simulation(client: httpx.Client) -> None:
    """An optimised battery lowers the 6 kW peak below 4 kW; NaN in a series is 422."""
    plain = client.post("/api/v1/twin/simulate", json=hourly_scenario()).json()
    assert plain["summary"]["peak_import_kw"] == 6.0
    shaved = client.post("/api/v1/twin/simulate", json=hourly_scenario(battery=BATTERY)).json()
    assert shaved["summary"]["peak_import_kw"] < 4.0
    bad = client.post("/api/v1/twin/simulate", json=hourly_scenario(load_kw=[1.0, "NaN"]))
    assert bad.status_code == 422


async def test_an_optimised_dispatch_is_scheduled_on_a_modbus_battery(api: ApiServer) -> None:
    """The optimised battery power becomes set_active_power entries, checked against a real
    Modbus battery and created as a schedule when sent; a push device is refused."""
    battery = await RegisterServer(unit_id=2, size=512).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            created = await http.post("/api/v1/devices", json={
                "id": "bat-1", "device_type": "battery", "rated_power_kw": 4.0,
                "connection": {"protocol": "modbus", "host": "127.0.0.1", "port": battery.port,
                               "unit_id": 2, "profile": "generic_battery"}})  # fmt: skip
            assert created.status_code == 201, created.text
            request = {"device_id": "bat-1", "scenario": hourly_scenario(battery=BATTERY)}
            preview = (await http.post("/api/v1/twin/dispatch", json=request)).json()
            assert preview["schedule_id"] is None
            entries = preview["schedule"]["entries"]
            assert {e["command"] for e in entries} == {"set_active_power"}
            assert any(e["value"] > 0 for e in entries)
            sent = await http.post("/api/v1/twin/dispatch", json={**request, "send": True})
            assert sent.status_code == 200, sent.text
            schedule = await http.get(f"/api/v1/schedules/{sent.json()['schedule_id']}")
            assert schedule.json()["device_id"] == "bat-1"
            assert len(schedule.json()["entries"]) == len(entries)
            await http.post("/api/v1/devices", json={"id": "pushed"})
            refused = await http.post(
                "/api/v1/twin/dispatch", json={**request, "device_id": "pushed", "send": True}
            )
            assert refused.status_code == 422
            assert "takes no commands" in refused.text
    finally:
        await battery.stop()


def household_readings(days: int) -> list[dict[str, Any]]:
    """The last ``days`` days to now of SimBench's H0-A household load as consumption (negative
    ``power_kw``: delivered to the grid is positive), 15-min."""
    load = simbench_load("H0-A").series / 1000.0
    end = pd.Timestamp.now(tz="UTC").floor("h")
    index = pd.date_range(end - pd.Timedelta(days=days), end, freq="15min", inclusive="left")
    values = -load.to_numpy()[: len(index)]
    return [
        {"device_id": "home", "timestamp": t.isoformat(), "power_kw": round(float(v), 4)}
        for t, v in zip(index, values, strict=True)
    ]


def test_a_located_load_frozen_at_night_is_stuck_and_not_judged_as_pv(
    client: httpx.Client,
) -> None:
    """A household load with a location (Greensboro), frozen from 02:00 to 06:00 UTC (night
    there) yesterday, is a stuck reading; PV's daylight rules (outage, clear-sky) do not apply
    to its consumption."""
    created = client.post("/api/v1/devices", json={
        "id": "home-gso", "device_type": "load", "rated_power_kw": 10.0,
        "location": {"latitude": 36.1, "longitude": -79.95}})  # fmt: skip
    assert created.status_code == 201, created.text
    night = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=1) + pd.Timedelta(hours=2)
    readings = household_readings(3)
    frozen = -0.3217  # a level the profile does not hold at 01:45 or 06:00
    for reading in readings:
        reading["device_id"] = "home-gso"
        if night <= pd.Timestamp(reading["timestamp"]) < night + pd.Timedelta(hours=4):
            reading["power_kw"] = frozen
    assert client.post("/api/v1/telemetry", json=readings).status_code == 202
    params = {"start": (night - pd.Timedelta(days=1)).isoformat(),
              "end": (night + pd.Timedelta(hours=12)).isoformat()}  # fmt: skip
    found = client.get("/api/v1/twin/home-gso/anomalies", params=params).json()
    assert [(a["kind"], a["start"]) for a in found] == [
        ("stuck", night.isoformat().replace("+00:00", "Z"))
    ], found


def test_what_if_on_served_forecasts(client: httpx.Client) -> None:
    """A what-if on a household's and a PV system's served forecasts: doubling the PV doubles
    its energy and lowers the import; an invalid change is 422 naming it."""
    assert (
        client.post("/api/v1/devices", json={"id": "home", "device_type": "load"}).status_code
        == 201
    )
    readings = household_readings(DAYS)
    for k in range(0, len(readings), 2000):
        assert client.post("/api/v1/telemetry", json=readings[k : k + 2000]).status_code == 202
    home = client.post("/api/v1/twin/home/train", json={"models": ["seasonal_daily"], "days": DAYS})
    assert home.status_code == 202
    deadline = time.monotonic() + 150
    while client.get(f"/api/v1/twin/jobs/{home.json()['job_id']}").json()["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    request = {"load_device_id": "home", "pv_device_id": DEVICE}
    base = client.post("/api/v1/twin/whatif", json=request)
    assert base.status_code == 200, base.text
    scaled = client.post("/api/v1/twin/whatif", json={**request, "changes": {"pv_scale": 2.0}})
    assert scaled.status_code == 200, scaled.text
    before, after = base.json()["summary"], scaled.json()["summary"]
    assert before["pv_energy_kwh"] > 1
    assert after["pv_energy_kwh"] == pytest.approx(2 * before["pv_energy_kwh"], rel=1e-6)
    assert after["energy_imported_kwh"] <= before["energy_imported_kwh"]
    invalid = client.post("/api/v1/twin/whatif", json={**request, "changes": {"pv_scale": -1}})
    assert invalid.status_code == 422
    assert "pv_scale" in invalid.text


async def test_a_served_forecast_is_stored_as_the_devices_latest(api: ApiServer) -> None:
    """GET /api/v1/forecast of the selected model a day ahead stores what it answered: after the
    server stops, the SQLite file holds the same model and P10/P50/P90 at the same times."""
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        created = await http.post("/api/v1/devices", json={"id": "pv-q", "device_type": "solar_pv"})
        assert created.status_code == 201, created.text
        readings = [r.model_dump(mode="json") for r in recent_readings("pv-q")]
        assert (await http.post("/api/v1/telemetry", json=readings)).status_code == 202
        save_quick_model(api.settings.data_dir / "twin", "pv-q")
        response = await http.get("/api/v1/forecast/pv-q", params={"horizon": "24h"})
    assert response.status_code == 200, response.text
    served = response.json()
    api.stop()
    store = SQLiteStore(api.settings.database_path)
    await store.open()
    try:
        stored = await store.latest_forecast("pv-q")
    finally:
        await store.close()
    assert stored is not None
    assert (stored.model, len(stored.points)) == (served["model"], 96) == (MODEL, 96)
    assert [
        {"timestamp": p.time, "p10": p.p10, "p50": p.p50, "p90": p.p90} for p in stored.points
    ] == [{**p, "timestamp": datetime.fromisoformat(p["timestamp"])} for p in served["points"]]


async def test_the_stored_forecast_is_served_once_one_is_issued(api: ApiServer) -> None:
    """GET /api/v1/forecast/{id}/stored is 404 naming the problem for an unknown device and for
    one without a stored forecast, then answers the day-ahead forecast a served request stored
    (model, issue time, points); the client reads it back."""
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        created = await http.post("/api/v1/devices", json={"id": "pv-s", "device_type": "solar_pv"})
        assert created.status_code == 201, created.text
        readings = [r.model_dump(mode="json") for r in recent_readings("pv-s")]
        assert (await http.post("/api/v1/telemetry", json=readings)).status_code == 202
        unknown = await http.get("/api/v1/forecast/nobody/stored")
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "unknown device 'nobody'"
        missing = await http.get("/api/v1/forecast/pv-s/stored")
        assert missing.status_code == 404
        assert "stored forecast" in missing.json()["detail"]
        assert "/api/v1/twin/pv-s/train" in missing.json()["detail"]
        save_quick_model(api.settings.data_dir / "twin", "pv-s")
        before = datetime.now(UTC) - timedelta(milliseconds=1)
        served = await http.get("/api/v1/forecast/pv-s", params={"horizon": "24h"})
        after = datetime.now(UTC)
        assert served.status_code == 200, served.text
        response = await http.get("/api/v1/forecast/pv-s/stored")
    assert response.status_code == 200, response.text
    stored = response.json()
    assert (stored["device_id"], stored["model"]) == ("pv-s", MODEL)
    assert before <= datetime.fromisoformat(stored["issued_at"]) <= after
    assert len(stored["points"]) == 96
    assert [as_times(p) for p in stored["points"]] == [as_times(p) for p in served.json()["points"]]
    async with AsyncDerimClient(api.url) as client:
        read = await client.stored_forecast("pv-s")
        with pytest.raises(ResourceNotFoundError, match="nobody"):
            await client.stored_forecast("nobody")
    assert read.model_dump(mode="json") == stored


async def test_a_stored_forecast_is_served_after_a_restart_step_by_step(api: ApiServer) -> None:
    """After a restart, GET /api/v1/forecast/{id}/stored answers the issue in the database: its
    model, issue time and each step's time with its own P10, P50 and P90."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        created = await http.post("/api/v1/devices", json={"id": "pv-r", "device_type": "solar_pv"})
        assert created.status_code == 201, created.text
    api.stop()
    issued = datetime(2030, 6, 1, 12, tzinfo=UTC)
    steps = [
        StoredForecastPoint(issued + (k + 1) * timedelta(minutes=15), 1.0 + k, 2.0 + k, 3.5 + k)
        for k in range(3)
    ]
    store = SQLiteStore(api.settings.database_path)
    await store.open()
    try:
        await store.write_forecast("pv-r", "gbm", issued, steps)
    finally:
        await store.close()
    restarted = ApiServer(api.settings.data_dir).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as http:
            response = await http.get("/api/v1/forecast/pv-r/stored")
    finally:
        restarted.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["device_id"], body["model"]) == ("pv-r", "gbm")
    assert datetime.fromisoformat(body["issued_at"]) == issued
    assert [as_times(p) for p in body["points"]] == [
        {"timestamp": p.time, "p10": p.p10, "p50": p.p50, "p90": p.p90} for p in steps
    ]


def as_times(point: dict[str, Any]) -> dict[str, Any]:
    """A forecast point with its timestamp parsed, to compare across serialisations."""
    return {**point, "timestamp": datetime.fromisoformat(point["timestamp"])}
