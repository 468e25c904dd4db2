"""The operator dashboard in headless Chromium against the real API: the fleet with live power
from the stream, a PV inverter's history, forecast band and anomalies, a power limit and a
remote start sent to a simulated OCPP charger, and the API key with authentication on."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from api_server import ApiServer
from playwright.async_api import Locator, Page, ViewportSize, expect

from async_helpers import until
from derim.security.keys import KeyStore, Role
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait
from derim.twin.datasets import greensboro_pv

PV = "pv-roof"
CHARGER = "CP-1"
DAYS = 60
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TABLET = ViewportSize(width=768, height=1024)
PV_DEVICE = {
    "id": PV,
    "name": "Roof array",
    "device_type": "solar_pv",
    "rated_power_kw": 4.6,
    "location": {"latitude": 36.1, "longitude": -79.95},
}
CHARGER_DEVICE = {
    "id": CHARGER,
    "name": "Carport charger",
    "device_type": "ev_charger",
    "connection": {"protocol": "ocpp", "charge_point_id": CHARGER},
}


def pv_readings(days: int) -> list[dict[str, Any]]:
    """``days`` of 15-min PV power (kW) up to now, from the same days of Greensboro's TMY year,
    with no readings from 8 h to 5 h ago (a communication gap)."""
    hourly = greensboro_pv().series / 1000.0
    end = pd.Timestamp.now(tz="UTC").floor("15min")
    index = pd.date_range(end - pd.Timedelta(days=days), end, freq="15min", inclusive="left")
    hour_of_year = (index.dayofyear.to_numpy() - 1) % 365 * 24 + index.hour.to_numpy()
    values = hourly.to_numpy()[(hour_of_year - hourly.index[0].hour) % len(hourly)]
    gap = (index >= end - pd.Timedelta(hours=8)) & (index < end - pd.Timedelta(hours=5))
    return [
        {"device_id": PV, "timestamp": t.isoformat(), "power_kw": round(float(v), 4)}
        for t, v, missing in zip(index, values, gap, strict=True)
        if not missing
    ]


def train(client: httpx.Client, device_id: str, **body: Any) -> dict[str, Any]:
    """Start a training job and wait until it is no longer running; the finished job."""
    started = client.post(f"/api/v1/twin/{device_id}/train", json=body)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/twin/jobs/{started.json()['job_id']}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.2)
    raise AssertionError("training did not finish in 120 s")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API (auth off, like the demo) with a PV inverter that has 60 days of readings and a
    trained seasonal model, and a registered OCPP charger that has not connected yet."""
    server = ApiServer(tmp_path_factory.mktemp("dashboard") / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for device in (PV_DEVICE, CHARGER_DEVICE):
                created = http.post("/api/v1/devices", json=device)
                assert created.status_code == 201, created.text
            readings = pv_readings(DAYS)
            for k in range(0, len(readings), 2000):
                posted = http.post("/api/v1/telemetry", json=readings[k : k + 2000])
                assert posted.status_code == 202, posted.text
            job = train(http, PV, models=["seasonal_daily"], days=DAYS, freq="15min")
            assert job["state"] == "succeeded", job
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the API, for what the test does beside the browser."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        yield http


async def post_power(client: httpx.AsyncClient, device_id: str, kw: float) -> None:
    """Post one reading of ``kw`` taken now."""
    reading = {"device_id": device_id, "timestamp": datetime.now(UTC).isoformat(), "power_kw": kw}
    response = await client.post("/api/v1/telemetry", json=[reading])
    assert response.status_code == 202, response.text


def device_row(page: Page, device_id: str) -> Locator:
    """The fleet table's row of one device."""
    return page.locator(f'[data-testid="device-row"][data-device-id="{device_id}"]')


async def screenshot(page: Page, name: str) -> None:
    """Save the whole page as ``tests/browser/artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


async def overflows_horizontally(page: Page) -> bool:
    """Whether the page is wider than its viewport (it would need sideways scrolling)."""
    return bool(await page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1"))


async def test_fleet_lists_devices_and_live_power_follows_the_stream(
    page: Page, api: ApiServer, client: httpx.AsyncClient
) -> None:
    """The fleet lists the devices; a reading posted now reaches its live power cell by stream."""
    await page.goto(api.url)
    await expect(page.get_by_test_id("device-row")).to_have_count(2)
    pv = device_row(page, PV)
    await expect(pv).to_contain_text("Roof array")
    await expect(pv).to_contain_text("solar_pv")
    await expect(device_row(page, CHARGER)).to_contain_text("ev_charger")
    await expect(pv.get_by_test_id("live-power")).to_have_text(re.compile(r"^-?\d+\.\d\d kW$"))
    await expect(page.get_by_test_id("stream-state")).to_have_text("stream: live")
    await post_power(client, PV, 4.321)
    await expect(pv.get_by_test_id("live-power")).to_have_text("4.32 kW")
    await expect(pv.get_by_test_id("device-state")).to_have_text("reporting")
    await screenshot(page, "fleet")


async def test_detail_charts_history_forecast_anomalies_and_live_points(
    page: Page, api: ApiServer, client: httpx.AsyncClient
) -> None:
    """The PV chart shows 24 h of means, P50 and P10-P90, the gap as a titled span, live points."""
    await page.goto(api.url)
    await device_row(page, PV).click()
    chart = page.get_by_test_id("chart")
    await expect(page.get_by_test_id("forecast-state")).to_have_text("forecast: seasonal_daily v1")
    await expect(chart.get_by_test_id("forecast-band")).to_have_attribute("d", re.compile(r"Z$"))
    await expect(chart.get_by_test_id("forecast-line")).to_have_attribute("d", re.compile(r"L"))
    history = chart.get_by_test_id("history-line")
    await expect(history).to_have_attribute("d", re.compile(r"^M"))
    points = len(re.findall(r"[ML]", await history.get_attribute("d") or ""))
    assert points >= 80, "a day of 15-min means, less the 3-hour gap"
    gap = chart.locator('[data-testid="anomaly-span"][data-kind="gap"]')
    await expect(gap.locator("title")).to_contain_text("gap")
    await post_power(client, PV, 1.5)
    await expect(chart.get_by_test_id("live-point")).to_have_count(1)
    assert not await overflows_horizontally(page)
    await screenshot(page, "detail-laptop")
    await page.set_viewport_size(TABLET)
    await expect(chart).to_be_visible()
    assert not await overflows_horizontally(page)
    await screenshot(page, "detail-tablet")


async def test_commands_round_trip_to_a_simulated_charger(
    page: Page, api: ApiServer, client: httpx.AsyncClient
) -> None:
    """The badge follows the charger; a limit and a start from the panel reach it, acknowledged."""
    await page.goto(api.url)
    await expect(page.get_by_test_id("stream-state")).to_have_text("stream: live")
    badge = device_row(page, CHARGER).get_by_test_id("device-state")
    await expect(badge).to_have_text("silent")
    port = (await client.get("/health")).json()["ocpp"]["port"]
    sim = SimulatedCharger(
        CHARGER, f"ws://127.0.0.1:{port}/ocpp", max_power_kw=22, meter_interval_s=1
    )
    task = asyncio.create_task(sim.run())
    try:
        await expect(badge).to_have_text("online")
        await device_row(page, CHARGER).click()
        await expect(page.get_by_test_id("forecast-state")).to_have_text("no trained model")
        form = page.get_by_test_id("command-form")
        result = page.get_by_test_id("command-result")
        rows = page.get_by_test_id("command-row")
        await form.get_by_test_id("command-select").select_option("set_power_limit")
        await form.get_by_test_id("command-value").fill("7")
        await form.get_by_test_id("command-send").click()
        await expect(result).to_contain_text("acknowledged")
        await expect(rows.first).to_contain_text("set_power_limit")
        await expect(rows.first).to_contain_text("acknowledged")
        assert sim.offered_kw() == pytest.approx(7.0, abs=0.05)
        await form.get_by_test_id("command-select").select_option("start_charging")
        await expect(form.get_by_test_id("command-value")).to_be_disabled()
        await form.get_by_test_id("command-send").click()
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("start_charging")
        await expect(result).to_contain_text("acknowledged")
        await until(lambda: sim.transaction_id() is not None)
        await screenshot(page, "control")
    finally:
        await cancel_and_wait(task)
    await expect(badge).to_have_text("offline")


async def test_the_api_key_is_asked_for_used_and_kept(page: Page, tmp_path: Path) -> None:
    """With auth on the page asks for a key; one entered loads fleet and stream, and is kept."""
    data = tmp_path / "data"
    keys = KeyStore(data / "keys.db")
    keys.open_sync()
    admin, viewer = (
        keys.create(f"browser-{role.value}", role)[1] for role in (Role.ADMIN, Role.VIEWER)
    )
    keys.close()
    server = ApiServer(data, auth_enabled=True).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            created = await http.post(
                "/api/v1/devices", json={"id": "meter-1"}, headers={"X-API-Key": admin}
            )
            assert created.status_code == 201, created.text
        await page.goto(server.url)
        await expect(page.get_by_test_id("notice")).to_contain_text("API key")
        await expect(page.get_by_test_id("stream-state")).to_have_text("stream: refused")
        await expect(page.get_by_test_id("device-row")).to_have_count(0)
        await page.get_by_label("API key").fill(viewer)
        await page.get_by_label("API key").press("Enter")
        await expect(page.get_by_test_id("device-row")).to_have_count(1)
        await expect(page.get_by_test_id("stream-state")).to_have_text("stream: live")
        await expect(page.get_by_test_id("notice")).to_be_hidden()
        await page.reload()
        await expect(page.get_by_test_id("device-row")).to_have_count(1)
        await expect(page.get_by_label("API key")).to_have_value(viewer)
    finally:
        server.stop()
