"""Response models of the API that are not models of the core: what the routes answer and the
typed client (``derim.client``) reads back. Pydantic only, so the client can import them
without FastAPI."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from derim.adapters.base import ConnectionState
from derim.adapters.ocpp.views import ChargerView
from derim.control.schedules import ScheduleRequest
from derim.models.device import DERDevice
from derim.security.keys import ApiKey
from derim.twin.scenario import SimulationResult
from derim.twin.store import ModelInfo


class ConnectionStatus(BaseModel):
    """How a polled device's connection is doing (absent for devices that push their data)."""

    state: ConnectionState
    last_seen: datetime | None = Field(None, description="Last successful poll (UTC).")
    last_error: str | None = None
    consecutive_failures: int = 0


class DeviceView(DERDevice):
    """A registered device with its live connection status (and, for a charger, its OCPP
    version, connectors, firmware status and security events)."""

    status: ConnectionStatus | None = None
    charger: ChargerView | None = None


class RejectView(BaseModel):
    """One rejected input; ``payload`` is text when it is UTF-8, else base64."""

    id: int
    received_at: datetime
    source: str
    topic: str
    reason: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]


class RejectPage(BaseModel):
    """Newest first; pass ``next_before`` as ``before`` for older ones (None: no more)."""

    total_since_start: int
    rejects: list[RejectView]
    next_before: int | None


class CreatedKey(ApiKey):
    """A new key with its token, shown this once only."""

    token: str


class ForecastPoint(BaseModel):
    """One step of a forecast: the interval start and the 10th, 50th and 90th percentiles."""

    timestamp: datetime
    p10: float
    p50: float
    p90: float


class ForecastResponse(BaseModel):
    """A served forecast and the model that made it; values in the field's unit (kW for
    ``power_kw``)."""

    device_id: str
    field: str
    model: str
    version: int
    trained_at: datetime
    freq: str
    horizon: str
    points: list[ForecastPoint]


class StoredForecastResponse(BaseModel):
    """The power forecast (kW) last issued and stored for a device: the model that made it, when
    it was issued (UTC) and its steps."""

    device_id: str
    model: str
    issued_at: datetime
    points: list[ForecastPoint]


class DispatchResponse(BaseModel):
    """The simulated dispatch, the schedule it makes and, when sent, the schedule's id."""

    result: SimulationResult
    schedule: ScheduleRequest
    schedule_id: uuid.UUID | None


class ModelsResponse(BaseModel):
    """The stored models of a device's field and the one served by default."""

    selected: str | None
    models: list[ModelInfo]
