"""The twin's request and response models, as the client uses them.

Imported on a client's first twin call, not with the client: the twin's models live beside its
numeric code (pandas, pvlib, scipy), which takes seconds to import. ``ForecastResponse``,
``ModelsResponse`` and ``DispatchResponse`` restate the API route's models (checked against the
OpenAPI document by the client's tests); the rest are the twin's own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from derim.control.schedules import ScheduleRequest
from derim.twin.anomaly_model import Anomaly
from derim.twin.scenario import Scenario, SimulationResult
from derim.twin.service import JobState, TrainingJob, TrainRequest
from derim.twin.store import ModelInfo

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Anomaly",
    "AnomalyList",
    "DispatchResponse",
    "ForecastPoint",
    "ForecastResponse",
    "JobState",
    "ModelInfo",
    "ModelsResponse",
    "Scenario",
    "SimulationResult",
    "TrainRequest",
    "TrainingJob",
]


AnomalyList = list[Anomaly]
"""What an anomaly scan returns."""


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

    def to_pandas(self) -> pd.DataFrame:
        """The points as a DataFrame (columns p10, p50, p90) indexed by UTC interval start."""
        import pandas as pd

        frame = pd.DataFrame([point.model_dump() for point in self.points])
        if frame.empty:
            return pd.DataFrame(columns=["p10", "p50", "p90"])
        return frame.set_index("timestamp")


class ModelsResponse(BaseModel):
    """The stored models of a device's field and the one served by default."""

    selected: str | None
    models: list[ModelInfo]


class DispatchResponse(BaseModel):
    """The simulated dispatch, the schedule it makes and, when sent, the schedule's id."""

    result: SimulationResult
    schedule: ScheduleRequest
    schedule_id: uuid.UUID | None
