"""The twin inside ``derim serve``: served forecasts, background training jobs, anomaly scans.

Each power forecast served from a device's selected model is also written to storage (its latest
issue, and for InfluxDB a ``forecast`` measurement that Grafana plots); ``refresh_forecasts``
issues the next day's forecast of every device that has a selected model.

Training runs in a child process of its own (one job at a time), ended when the service closes,
so neither the event loop nor the API's threads wait for it; torch is imported there, never in
the serving process unless an LSTM is served. pandas, NumPy and the models' libraries (LightGBM,
pvlib, SciPy) are imported by the methods that use them, so a server that never forecasts or
scans does not load them (the edge profile's memory, docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from derim.bus.events import Event, EventType
from derim.errors import DerimError, NotFoundError, TwinError
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.storage.anomalies import AnomalyStore
from derim.storage.base import Store, StoredForecastPoint
from derim.storage.registry import DeviceRegistry
from derim.tasks import cancel_and_wait
from derim.twin.anomaly_model import Anomaly
from derim.twin.store import ModelInfo, ModelStore

if TYPE_CHECKING:
    import pandas as pd

    from derim.twin.anomaly import AnomalyConfig
    from derim.twin.base import Forecast, Forecaster
    from derim.twin.training import TrainingPlan

log = logging.getLogger(__name__)

POWER_FIELD = "power_kw"
"""The field whose forecasts are stored (kW)."""
REFRESH_HORIZON = timedelta(hours=24)
"""How far ahead ``refresh_forecasts`` forecasts."""
RESIDUAL_WINDOW = timedelta(days=14)
"""Anomaly scans compare with a model's day-ahead forecasts for windows up to this long."""
MAX_SCAN_WINDOW = timedelta(days=366)


class TrainRequest(BaseModel):
    """What to train for a device: field, candidate models, history length, step and horizon."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field("power_kw", pattern=r"^[a-z0-9_]{1,64}$")
    models: list[str] | None = Field(None, description="Default: every model.", max_length=16)
    days: int = Field(365, ge=7, le=3660, description="Days of stored history to use.")
    freq: str = Field("15min", description="15min or 1h.")
    horizon: str = Field("24h", description="Forecast horizon, up to 168h.")


class JobState(StrEnum):
    """Where a training job is."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class TrainingJob(BaseModel):
    """A background training job and, once done, its report or error."""

    job_id: str
    device_id: str
    field: str
    state: JobState
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    selected: str | None = None
    models: list[ModelInfo] = Field(default_factory=list)
    backtest: list[dict[str, object]] = Field(default_factory=list)


@dataclass
class _Served:
    version: int
    forecaster: Forecaster
    info: ModelInfo


GENERATORS = (DeviceType.SOLAR_PV, DeviceType.WIND)
"""Devices whose power is never meant to flow backwards (import is out of range)."""


def _anomaly_config(device: DERDevice) -> AnomalyConfig:
    """Range checks for the device's kind: generators may not import more than a trickle;
    batteries, chargers, meters and loads (consumption is negative) may go to minus the rating."""
    from derim.twin.anomaly import AnomalyConfig

    if device.device_type in GENERATORS:
        return AnomalyConfig()
    return AnomalyConfig(range_min_fraction=-AnomalyConfig().range_max_factor)


def run_training(root: Path, series: pd.Series, plan: TrainingPlan, answer: Connection) -> None:
    """Train in a child process and send back ``("ok", report)`` or ``("error", message)``."""
    from derim.twin.training import train

    try:
        answer.send(("ok", train(series, plan, ModelStore(root))))
    except Exception as exc:  # any failure of the job goes back to the parent as its error
        answer.send(("error", str(exc) or type(exc).__name__))
    finally:
        answer.close()


def _wait_for_answer(answer: Connection) -> tuple[str, object]:
    """The child's answer; ``("error", ...)`` when it died without one."""
    try:
        outcome: tuple[str, object] = answer.recv()
    except EOFError:
        return "error", "the training process stopped without an answer"
    finally:
        answer.close()
    return outcome


class TwinService:
    """Forecasts, training jobs and anomaly scans for registered devices."""

    def __init__(
        self,
        root: Path,
        registry: DeviceRegistry,
        store: Store,
        anomalies: AnomalyStore,
        epochs: int | None = None,
        events: Callable[[Event], None] | None = None,
    ) -> None:
        self.models = ModelStore(root)
        self.events = events
        """Told of each anomaly a scan stores for the first time."""
        self.epochs = epochs
        """LSTM training epochs."""
        self.registry = registry
        self.store = store
        self.anomaly_store = anomalies
        self.jobs: dict[str, TrainingJob] = {}
        self._served: dict[tuple[str, str, str], _Served] = {}
        self._one_at_a_time = asyncio.Lock()
        self._process: BaseProcess | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop training: a job in progress is abandoned and its process ended."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
        for task in list(self._tasks):
            await cancel_and_wait(task)

    async def forecast(
        self, device_id: str, field: str, horizon: pd.Timedelta, model: str | None
    ) -> tuple[Forecast, ModelInfo]:
        """The forecast of ``field`` from now, by ``model`` or the one the backtest chose; a
        ``power_kw`` forecast of the chosen model reaching ``REFRESH_HORIZON`` ahead is also
        stored (a storage failure is logged), so a shorter one never replaces a stored day."""
        import pandas as pd

        from derim.twin.history import load_history

        self.registry.get(device_id)
        selected = self.models.selected(device_id, field)
        name = model or selected
        if name is None:
            raise NotFoundError(
                "trained model",
                f"{device_id}/{field} (train one: POST /api/v1/twin/{device_id}/train)",
            )
        served = await asyncio.to_thread(self._load, device_id, field, name)
        forecaster = served.forecaster
        freq = forecaster.freq
        end = pd.Timestamp.now(tz="UTC").floor(freq)
        start = end - pd.Timedelta(days=forecaster.context_days)
        history = await load_history(self.store, device_id, field, start, end, freq)
        forecast = await asyncio.to_thread(forecaster.predict, horizon, history)
        if field == POWER_FIELD and name == selected and horizon >= pd.Timedelta(REFRESH_HORIZON):
            await self._persist(device_id, name, forecast)
        return forecast, served.info

    async def _persist(self, device_id: str, model: str, forecast: Forecast) -> None:
        """Store a served power forecast as the device's latest; failures are only logged.

        Steps without a finite value (a model's gap) are left out: the chart shows a gap.
        """
        import numpy as np

        finite = np.isfinite(forecast.p10) & np.isfinite(forecast.p50) & np.isfinite(forecast.p90)
        points = [
            StoredForecastPoint(t.to_pydatetime(), float(lo), float(mid), float(hi))
            for t, lo, mid, hi, ok in zip(
                forecast.index, forecast.p10, forecast.p50, forecast.p90, finite, strict=True
            )
            if ok
        ]
        try:
            await self.store.write_forecast(device_id, model, datetime.now(UTC), points)
        except DerimError as exc:
            log.warning("forecast of %s served but not stored: %s", device_id, exc)

    async def refresh_forecasts(self) -> int:
        """Issue and store the next ``REFRESH_HORIZON`` of power forecast for every device with
        a selected model; the number of devices whose forecast was made."""
        chosen = await asyncio.to_thread(self._with_selected_model, POWER_FIELD)
        if not chosen:
            return 0
        import pandas as pd

        made = 0
        for device_id in chosen:
            try:
                await self.forecast(device_id, POWER_FIELD, pd.Timedelta(REFRESH_HORIZON), None)
            except DerimError as exc:
                log.warning("forecast refresh of %s failed: %s", device_id, exc)
                continue
            except Exception:  # a broken model file must not stop the other devices' forecasts
                log.exception("forecast refresh of %s failed unexpectedly", device_id)
                continue
            made += 1
        return made

    def _with_selected_model(self, field: str) -> list[str]:
        """The registered devices whose ``field`` has a selected model (reads files: run it
        off the event loop); a device whose selection cannot be read is logged and left out."""
        chosen = []
        for device in self.registry.list():
            try:
                if self.models.selected(device.id, field):
                    chosen.append(device.id)
            except (OSError, ValueError) as exc:
                log.warning("model selection of %s unreadable: %s", device.id, exc)
        return chosen

    def _load(self, device_id: str, field: str, name: str) -> _Served:
        """The latest stored version of a model, from memory when it is unchanged."""
        key = (device_id, field, name)
        version = self.models.latest_version(device_id, field, name)
        cached = self._served.get(key)
        if cached is not None and cached.version == version:
            return cached
        forecaster, info = self.models.load(device_id, field, name)
        self._served[key] = _Served(info.version, forecaster, info)
        return self._served[key]

    async def start_training(self, device_id: str, request: TrainRequest) -> TrainingJob:
        """Load the history and start a training job; returns at once."""
        import pandas as pd

        from derim.twin.catalogue import FORECASTERS
        from derim.twin.history import load_history
        from derim.twin.timeseries import parse_duration
        from derim.twin.training import TrainingPlan, site_of

        device = self.registry.get(device_id)
        models = request.models or list(FORECASTERS)
        unknown = [m for m in models if m not in FORECASTERS]
        if unknown:
            raise TwinError(
                f"unknown model(s) {', '.join(unknown)}; known: {', '.join(FORECASTERS)}"
            )
        freq = parse_duration(request.freq, "freq")
        horizon = parse_duration(request.horizon, "horizon")
        end = pd.Timestamp.now(tz="UTC").floor(freq)
        series = await load_history(
            self.store, device_id, request.field, end - pd.Timedelta(days=request.days), end, freq
        )
        plan = TrainingPlan(
            device_id, request.field, models, freq, horizon, site_of(device), epochs=self.epochs
        )
        job = TrainingJob(
            job_id=uuid.uuid4().hex,
            device_id=device_id,
            field=request.field,
            state=JobState.RUNNING,
            started_at=datetime.now(UTC),
        )
        self.jobs[job.job_id] = job
        task = asyncio.create_task(self._run(job, series, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: TrainingJob, series: pd.Series, plan: TrainingPlan) -> None:
        """Run one job in its own process (one job at a time) and record its outcome."""
        from derim.twin.training import TrainingReport

        async with self._one_at_a_time:
            context = multiprocessing.get_context("spawn")
            answer, child_end = context.Pipe(duplex=False)
            process = context.Process(
                target=run_training,
                args=(self.models.root, series, plan, child_end),
                name=f"derim-train-{job.job_id}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self._process = process
            try:
                kind, outcome = await asyncio.to_thread(_wait_for_answer, answer)
            finally:
                await asyncio.to_thread(process.join, 10)
                self._process = None
        if kind == "ok" and isinstance(outcome, TrainingReport):
            job.state, job.selected = JobState.SUCCEEDED, outcome.selected
            job.models, job.backtest = outcome.models, outcome.backtest
        else:
            log.warning("training %s for %s failed: %s", job.job_id, job.device_id, outcome)
            job.state, job.error = JobState.FAILED, str(outcome)
        job.finished_at = datetime.now(UTC)

    def job(self, job_id: str) -> TrainingJob:
        """A training job started by this process."""
        found = self.jobs.get(job_id)
        if found is None:
            raise NotFoundError("training job", job_id)
        return found

    async def anomalies(
        self, device_id: str, field: str, start: datetime, end: datetime
    ) -> list[Anomaly]:
        """Scan [start, end) of the stored readings, store what is found (publishing an
        ``anomaly`` event for each one not stored before), return all stored."""
        import pandas as pd

        from derim.twin.anomaly import detect
        from derim.twin.history import load_history
        from derim.twin.training import site_of

        device = self.registry.get(device_id)
        if end - start > MAX_SCAN_WINDOW:
            raise TwinError(f"the anomaly window is longer than {MAX_SCAN_WINDOW.days} days")
        freq = pd.Timedelta(minutes=15)
        try:
            measured = await load_history(self.store, device_id, field, start, end, freq)
        except TwinError:
            measured = None
        if measured is not None:
            expected = await self._expected(device, field, measured)
            to_watts = 1000.0 if field.endswith("_kw") else 1.0
            capacity = device.rated_power_kw
            found = await asyncio.to_thread(
                detect,
                measured * to_watts,
                freq=freq,
                expected=None if expected is None else expected * to_watts,
                site=site_of(device) if device.device_type is DeviceType.SOLAR_PV else None,
                capacity=None if capacity is None else capacity * 1000.0,
                config=_anomaly_config(device),
                field=field,
            )
            new = await self.anomaly_store.add(device_id, found)
            if self.events is not None:
                for anomaly in new:
                    data = anomaly.model_dump(mode="json")
                    self.events(Event(type=EventType.ANOMALY, device_id=device_id, data=data))
        return await self.anomaly_store.between(device_id, start, end)

    async def scan_all(self, window: timedelta) -> int:
        """Scan every registered device's ``power_kw`` over the last ``window``; the number of
        devices scanned (those with readings). New anomalies are published as events."""
        end = datetime.now(UTC)
        scanned = 0
        for device in self.registry.list():
            try:
                await self.anomalies(device.id, "power_kw", end - window, end)
            except DerimError as exc:
                log.warning("anomaly scan of %s failed: %s", device.id, exc)
                continue
            except Exception:  # one device's bad data or model must not stop the others' scan
                log.exception("anomaly scan of %s failed unexpectedly", device.id)
                continue
            scanned += 1
        return scanned

    async def _expected(
        self, device: DERDevice, field: str, measured: pd.Series
    ) -> pd.DataFrame | None:
        """Day-ahead forecasts of the served model over ``measured`` (short windows only)."""
        import pandas as pd

        from derim.twin.history import load_history
        from derim.twin.timeseries import steps_per_day

        name = self.models.selected(device.id, field)
        span = measured.index[-1] - measured.index[0]
        if name is None or span > RESIDUAL_WINDOW:
            return None
        forecaster = (await asyncio.to_thread(self._load, device.id, field, name)).forecaster
        if forecaster.freq != pd.Timedelta(minutes=15):
            return None
        context = pd.Timedelta(days=forecaster.context_days)
        before = await load_history(
            self.store,
            device.id,
            field,
            measured.index[0] - context,
            measured.index[0],
            forecaster.freq,
        )
        series = pd.concat([before, measured])
        per_day = steps_per_day(forecaster.freq)
        frames = []
        for origin in range(len(before), len(series), per_day):
            frames.append(forecaster.predict(pd.Timedelta(days=1), series.iloc[:origin]).frame())
        return pd.concat(frames).reindex(measured.index)
