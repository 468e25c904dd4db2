"""The anomaly record that detection produces, storage keeps and the API returns.

Apart from :mod:`derim.twin.anomaly` (the detector, which needs NumPy, pandas and pvlib) so that
storage and the API load without them.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, model_validator

AnomalyKind = Literal["outage", "stuck", "out_of_range", "gap", "spike", "drift", "residual"]
Severity = Literal["low", "medium", "high"]


class Anomaly(BaseModel):
    """One anomalous event on one field: what, when (UTC), how bad and why."""

    model_config = ConfigDict(frozen=True)

    kind: AnomalyKind
    field: str
    start: AwareDatetime
    end: AwareDatetime
    """End of the last anomalous interval."""
    severity: Severity
    reason: str
    """A sentence with the numbers behind the flag."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self
