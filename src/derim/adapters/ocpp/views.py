"""What the API shows of chargers and sites: pydantic models only, without the ocpp library,
so the API's views and the typed client (``derim.client``) can import them cheaply."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from derim.models.common import ConnectorStatus

Version = Literal["1.6", "2.0.1"]
"""An OCPP version DERIM speaks."""
SECURITY_EVENTS_KEPT = 20
"""How many security events the central system keeps per charger."""


class ConnectorView(BaseModel):
    """A connector (1.6) or EVSE (2.0.1) as the charger last reported it."""

    connector_id: int
    status: ConnectorStatus | None = None
    error_code: str | None = None
    updated_at: datetime | None = None


class SecurityEvent(BaseModel):
    """A SecurityEventNotification from a charger."""

    type: str
    timestamp: datetime
    tech_info: str | None = None


class ChargerView(BaseModel):
    """What the central system knows of a charger beyond the registry."""

    ocpp_version: Version | None = None
    connected: bool = False
    connectors: list[ConnectorView] = Field(default_factory=list)
    firmware_status: str | None = None
    security_events: list[SecurityEvent] = Field(
        default_factory=list, description=f"The newest {SECURITY_EVENTS_KEPT}, oldest first."
    )


class Share(BaseModel):
    """One session's part of a site limit and what its charger answered."""

    device_id: str
    connector_id: int
    transaction_id: str
    limit_kw: float
    answer: str = Field(description="Accepted, Rejected, a CallError code, timeout or offline.")


class SiteView(BaseModel):
    """A site's limit and its current split."""

    site: str
    limit_kw: float | None
    allocated_kw: float = Field(description="Sum of the shares, kW.")
    shares: list[Share]
    updated_at: datetime | None = None
