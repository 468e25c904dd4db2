"""The state a simulated OCPP charger keeps per connector, shared by the charger
(:mod:`derim.sim.ocpp_charger`) and its version dialects (:mod:`derim.sim.ocpp_dialect`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from derim.sim import ocpp_profiles as prof

Sample = tuple[str, float, str, str | None, str | None]
"""A meter sample: (measurand, value, unit, phase, location)."""
FollowUp = Callable[[], Awaitable[object]]
"""Work that runs once the answer to the CSMS's call went out."""
TX = prof.Purpose.TX


def now_iso(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as OCPP date-time (UTC, ISO 8601 to the ms, ``Z``)."""
    moment = datetime.now(UTC) if moment is None else moment
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Session:
    """An EV on a connector, and its transaction while one runs."""

    id_tag: str
    ev_max_kw: float | None  # None: takes what the charger offers
    soc_percent: float
    capacity_kwh: float
    tx_id: str | None = None
    started: datetime | None = None
    starting: bool = False  # a transaction is being started
    finished: bool = False  # its transaction ended, the EV is still plugged in
    seq_no: int = 0  # 2.0.1 TransactionEvent sequence number
    remote_start_id: int | None = None
    tx_profile: prof.Profile | None = None  # from a remote start, installed at the start


@dataclass
class Connector:
    """A connector (OCPP 1.6) or EVSE (2.0.1): its session and energy register (Wh)."""

    id: int
    session: Session | None = None
    energy_wh: float = 0.0
    last_tick: float | None = None  # loop time of the last energy integration (s)
    pending_availability: str | None = None  # applied when the transaction ends
    last_status: str | None = None

    @property
    def running(self) -> bool:
        """A transaction runs on the connector."""
        return self.session is not None and self.session.tx_id is not None

    @property
    def tx_start(self) -> datetime | None:
        """When the running transaction started (None without one): where TxProfiles begin."""
        session = self.session
        return session.started if session is not None and session.tx_id else None
