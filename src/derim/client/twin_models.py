"""The twin's request and response models, as the client uses them.

Pydantic only: the numeric code beside them (pandas, pvlib, scipy) is not imported, except by
``ForecastResponse.to_pandas``. The responses are the API's own (``derim.api.views``);
``ForecastResponse`` adds ``to_pandas``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from derim.api import views
from derim.api.views import DispatchResponse, ForecastPoint, ModelsResponse
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


class ForecastResponse(views.ForecastResponse):
    """A served forecast and the model that made it; values in the field's unit (kW for
    ``power_kw``)."""

    def to_pandas(self) -> pd.DataFrame:
        """The points as a DataFrame (columns p10, p50, p90) indexed by UTC interval start."""
        import pandas as pd

        frame = pd.DataFrame([point.model_dump() for point in self.points])
        if frame.empty:
            return pd.DataFrame(columns=["p10", "p50", "p90"])
        return frame.set_index("timestamp")
