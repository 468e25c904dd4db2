"""Response models of routes whose server-side models live in the API's route modules.

Importing those would pull FastAPI and the twin's numeric stack into every client, so these
few are restated here; ``tests/unit/client/test_client_openapi.py`` compares each one's fields
with the OpenAPI component of the same name. Everything else the client returns is the
server's own model (``derim.models``, ``derim.control.schedules``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from derim.adapters.base import ConnectionState
from derim.adapters.ocpp.central import ChargerView
from derim.models.device import DERDevice
from derim.security.keys import ApiKey
from derim.storage.base import Aggregation, Interval

if TYPE_CHECKING:
    import pandas as pd


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


class TelemetryPage(BaseModel):
    """A page of a device's readings in ``[start, end)``; ``next_cursor`` is set while more
    lie in the window. Each record holds ``timestamp`` (ISO 8601 text, UTC) and the fields with
    data, in canonical units (kW, kWh, V, A, Hz, %, degC)."""

    device_id: str
    start: datetime
    end: datetime
    every: Interval | None = None
    agg: Aggregation | None = None
    count: int
    next_cursor: str | None = None
    records: list[dict[str, Any]]

    def to_pandas(self) -> pd.DataFrame:
        """The records as a DataFrame indexed by UTC timestamp."""
        return telemetry_frame(self.records)


def telemetry_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Telemetry records as a DataFrame indexed by UTC timestamp (columns: the fields)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(records))
    if frame.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="timestamp"))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.set_index("timestamp").sort_index()
