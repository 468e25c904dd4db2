"""What a grid-facing link (OpenADR VEN, DNP3 outstation, IEEE 2030.5 client) may use of DERIM.

Grid links bring commands from the utility side and report the fleet back. They reach devices
only through the control layer, so every command they cause gets the same validation,
arbitration (each link is its own ``source``), lifecycle record and audit as one from the API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from derim.errors import DerimError
from derim.models.command import CommandRequest, CommandResult
from derim.models.device import DERDevice

log = logging.getLogger(__name__)

Submit = Callable[[str, CommandRequest], Awaitable[CommandResult]]
Latest = Callable[[Sequence[str]], Awaitable[dict[str, dict[str, object]]]]


@dataclass(frozen=True)
class FleetAccess:
    """The control layer, the registry and the latest readings, as a grid link sees them."""

    submit: Submit
    """``Controller.submit``: validates, arbitrates, sends and records one command."""
    devices: Callable[[], list[DERDevice]]
    """Every registered device."""
    latest: Latest
    """The most recent stored reading of each device that has one, as field dicts."""

    def members(self, group: str) -> list[DERDevice]:
        """The registered devices in ``group``, in registry order."""
        return [device for device in self.devices() if group in device.groups]

    def device(self, device_id: str) -> DERDevice | None:
        """One registered device, or None."""
        return next((d for d in self.devices() if d.id == device_id), None)


@dataclass(frozen=True)
class Outcome:
    """What became of one command a grid link asked for: the record, or why there is none."""

    device_id: str
    result: CommandResult | None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        """Whether the device confirmed the command."""
        return self.result is not None and self.result.status == "acknowledged"

    def describe(self) -> str:
        """The command's status, or why it has no record (for logs)."""
        if self.result is not None:
            return self.result.status.value
        return self.error or "not carried out"


def fresh(
    latest: Mapping[str, Mapping[str, object]], now: datetime, stale_after_s: float
) -> dict[str, Mapping[str, object]]:
    """The readings of ``latest`` taken at most ``stale_after_s`` seconds before ``now``."""
    oldest = now - timedelta(seconds=stale_after_s)
    return {
        device_id: reading
        for device_id, reading in latest.items()
        if isinstance(stamp := reading.get("timestamp"), datetime) and stamp >= oldest
    }


async def submit_each(
    fleet: FleetAccess, device_ids: Sequence[str], request: CommandRequest
) -> list[Outcome]:
    """Send ``request`` to each device in turn; one device's refusal or failure (a
    ``DerimError``) is kept in its outcome and does not stop the others."""
    outcomes = []
    for device_id in device_ids:
        try:
            outcomes.append(Outcome(device_id, await fleet.submit(device_id, request)))
        except DerimError as exc:
            log.info("%s to %s not carried out: %s", request.command.value, device_id, exc)
            outcomes.append(Outcome(device_id, None, str(exc)))
    return outcomes
