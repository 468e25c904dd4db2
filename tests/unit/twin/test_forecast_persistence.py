"""The twin stores the power forecasts it serves from a device's selected model, refreshes them
for every such device, and the core does that periodically."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from async_helpers import until_async
from derim.config import load_settings
from derim.errors import StorageUnavailableError
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.services import running_services
from derim.storage.anomalies import AnomalyStore
from derim.storage.base import StoredForecastPoint
from derim.storage.registry import DeviceRegistry
from derim.storage.sqlite import SQLiteStore
from derim.twin.base import Forecast
from derim.twin.service import TwinService
from twin_helpers import MODEL, recent_readings, save_quick_model

DAY = pd.Timedelta(hours=24)


class UnwritableForecasts(SQLiteStore):
    """A store whose forecast writes fail as if the backend were down."""

    async def write_forecast(
        self, device_id: str, model: str, issued_at: datetime, points: Sequence[StoredForecastPoint]
    ) -> None:
        raise StorageUnavailableError("forecast storage is down")


async def open_twin(root: Path, store: SQLiteStore) -> AsyncIterator[TwinService]:
    """A twin over ``store`` with devices pv-1 (with a quick model and readings) and pv-2."""
    registry = DeviceRegistry(root / "registry.db")
    anomalies = AnomalyStore(root / "anomalies.db")
    await registry.open()
    await anomalies.open()
    await store.open()
    twin = TwinService(root / "twin", registry, store, anomalies)
    try:
        for device_id in ("pv-1", "pv-2"):
            await registry.upsert(DERDevice(id=device_id, device_type=DeviceType.SOLAR_PV))
            await store.write(recent_readings(device_id))
        save_quick_model(root / "twin", "pv-1")
        yield twin
    finally:
        await twin.close()
        await store.close()
        anomalies.close()
        await registry.close()


@pytest.fixture
async def twin(tmp_path: Path) -> AsyncIterator[TwinService]:
    """A twin on a working SQLite store."""
    async for opened in open_twin(tmp_path, SQLiteStore(tmp_path / "t.db")):
        yield opened


def as_points(forecast: Forecast) -> list[StoredForecastPoint]:
    """A served forecast as stored steps."""
    return [
        StoredForecastPoint(t.to_pydatetime(), lo, mid, hi)
        for t, lo, mid, hi in zip(
            forecast.index,
            forecast.p10.tolist(),
            forecast.p50.tolist(),
            forecast.p90.tolist(),
            strict=True,
        )
    ]


async def test_a_served_forecast_of_the_selected_model_is_stored(twin: TwinService) -> None:
    """The forecast served from the selected model becomes the device's stored latest, step by
    step, issued before the steps it forecasts."""
    served, info = await twin.forecast("pv-1", "power_kw", DAY, None)
    assert info.model == MODEL
    stored = await twin.store.latest_forecast("pv-1")
    assert stored is not None
    assert stored.model == MODEL
    assert list(stored.points) == as_points(served)
    assert len(stored.points) == 96
    assert stored.issued_at < stored.points[-1].time
    assert max(p.p50 for p in stored.points) > 1.0


async def test_an_explicitly_chosen_other_model_is_not_stored(twin: TwinService) -> None:
    """Serving a model other than the selected one leaves storage untouched."""
    twin.models.select("pv-1", "power_kw", "persistence")
    await twin.forecast("pv-1", "power_kw", DAY, MODEL)
    assert await twin.store.latest_forecast("pv-1") is None


async def test_a_storage_failure_is_logged_and_the_forecast_still_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the forecast cannot be stored the caller still gets it, and a warning says why."""
    async for twin in open_twin(tmp_path, UnwritableForecasts(tmp_path / "t.db")):
        with caplog.at_level(logging.WARNING, logger="derim.twin.service"):
            served, _ = await twin.forecast("pv-1", "power_kw", DAY, None)
        assert len(served.index) == 96
        assert "not stored: forecast storage is down" in caplog.text


async def test_refresh_stores_the_next_day_of_every_device_with_a_model(
    twin: TwinService,
) -> None:
    """One refresh forecasts the device that has a selected model, and only that one."""
    assert await twin.refresh_forecasts() == 1
    stored = await twin.store.latest_forecast("pv-1")
    assert stored is not None
    assert len(stored.points) == 96
    assert await twin.store.latest_forecast("pv-2") is None


async def test_a_shorter_forecast_does_not_replace_the_stored_day(twin: TwinService) -> None:
    """An hour-ahead forecast from the selected model is served but leaves the stored day."""
    await twin.forecast("pv-1", "power_kw", DAY, None)
    short, _ = await twin.forecast("pv-1", "power_kw", pd.Timedelta(hours=1), None)
    assert len(short.index) == 4
    stored = await twin.store.latest_forecast("pv-1")
    assert stored is not None
    assert len(stored.points) == 96


async def test_a_broken_model_file_does_not_stop_the_refresh_of_the_others(
    twin: TwinService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device whose stored model cannot be loaded is logged; the other devices' forecasts
    are still made and stored."""
    save_quick_model(tmp_path / "twin", "pv-2")
    for model_file in (tmp_path / "twin" / "pv-2").rglob("*.pkl"):
        model_file.write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING, logger="derim.twin.service"):
        assert await twin.refresh_forecasts() == 1
    assert "forecast refresh of pv-2 failed" in caplog.text
    assert await twin.store.latest_forecast("pv-1") is not None


async def test_an_unexpected_error_for_one_device_is_logged_and_the_others_refreshed(
    twin: TwinService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug met while forecasting one device (not a DerimError) is logged with its traceback
    and the refresh goes on with the next device."""
    save_quick_model(tmp_path / "twin", "pv-2")
    serve = twin.forecast

    async def failing_for_pv2(device_id: str, *args: Any) -> Any:
        if device_id == "pv-2":
            raise ValueError("a model's bug")
        return await serve(device_id, *args)

    monkeypatch.setattr(twin, "forecast", failing_for_pv2)
    with caplog.at_level(logging.ERROR, logger="derim.twin.service"):
        assert await twin.refresh_forecasts() == 1
    assert "forecast refresh of pv-2 failed unexpectedly" in caplog.text
    assert "a model's bug" in caplog.text
    assert await twin.store.latest_forecast("pv-1") is not None


async def test_an_unreadable_model_selection_leaves_only_that_device_out(
    twin: TwinService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt selection file of one device is logged; the others are still refreshed."""
    save_quick_model(tmp_path / "twin", "pv-2")
    for selection in (tmp_path / "twin" / "pv-2").rglob("selection.json"):
        selection.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="derim.twin.service"):
        assert await twin.refresh_forecasts() == 1
    assert "model selection of pv-2 unreadable" in caplog.text


async def test_the_core_refreshes_forecasts_periodically(tmp_path: Path) -> None:
    """``running_services`` with ``forecast_refresh_interval_s`` stores a forecast for a device
    once it has a selected model and readings, without any request."""
    settings = load_settings(
        data_dir=tmp_path,
        forecast_refresh_interval_s=0.05,
        anomaly_scan_interval_s=None,
        ocpp_enabled=False,
    )
    async with running_services(settings) as services:
        await services.registry.upsert(DERDevice(id="pv-1", device_type=DeviceType.SOLAR_PV))
        await services.ingest(recent_readings("pv-1"))
        save_quick_model(tmp_path / "twin", "pv-1")

        async def stored() -> bool:
            return await services.store.latest_forecast("pv-1") is not None

        await until_async(stored, timeout_s=30)
        latest = await services.store.latest_forecast("pv-1")
        assert latest is not None
        assert latest.model == MODEL
        assert len(latest.points) == 96
