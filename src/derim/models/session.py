"""Charging sessions (OCPP transactions) of EV chargers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, computed_field

from derim.models.common import DeviceId, UtcDatetime


class SessionState(StrEnum):
    """Whether a charging session is still running."""

    ACTIVE = "active"
    COMPLETED = "completed"


class ChargingSession(BaseModel):
    """One charging session: who charged, where, when and how much.

    Energies come from the charger's import register (kWh); ``energy_kwh`` is the register at
    the last reading (or at the stop) minus the register at the start.
    """

    model_config = ConfigDict(extra="forbid")

    session_id: int = Field(description="DERIM's number for the session.")
    device_id: DeviceId
    transaction_id: str = Field(
        description="OCPP transaction id (1.6: DERIM's; 2.0.1: the charger's)."
    )
    connector_id: int = Field(description="Connector (1.6) or EVSE (2.0.1).")
    id_tag: str | None = Field(None, description="The id tag or token that authorised it.")
    state: SessionState
    started_at: UtcDatetime
    stopped_at: UtcDatetime | None = None
    meter_start_kwh: float | None = None
    meter_last_kwh: float | None = Field(None, description="Import register at the last reading.")
    stop_reason: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def energy_kwh(self) -> float | None:
        """Energy delivered to the vehicle so far, kWh."""
        if self.meter_start_kwh is None or self.meter_last_kwh is None:
            return None
        return round(max(0.0, self.meter_last_kwh - self.meter_start_kwh), 6)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float | None:
        """Seconds from start to stop; None while active."""
        if self.stopped_at is None:
            return None
        return (self.stopped_at - self.started_at).total_seconds()

    def ended(self, at: datetime, meter_kwh: float | None, reason: str | None) -> ChargingSession:
        """This session stopped at ``at`` with the register at ``meter_kwh``.

        The register only grows, so the higher of the stop value and the last reading holds (a
        1.6 ``meterStop`` is whole Wh, and may round below a finer reading).
        """
        readings = [m for m in (meter_kwh, self.meter_last_kwh) if m is not None]
        return self.model_copy(
            update={
                "state": SessionState.COMPLETED,
                "stopped_at": at,
                "meter_last_kwh": max(readings) if readings else None,
                "stop_reason": reason,
            }
        )
