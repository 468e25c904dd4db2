"""Response models the client reads: the API's own (``derim.api.views``, re-exported here) and
the few the routes build inline, restated; ``tests/unit/client/test_client_openapi.py``
compares each restated one's fields with the OpenAPI component of the same name. Everything
else the client returns is the server's own model (``derim.models``, ``derim.control.schedules``,
...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from derim.storage.base import Aggregation, Interval

if TYPE_CHECKING:
    import pandas as pd


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
