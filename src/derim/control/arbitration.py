"""Arbitration of power limits set on one device by several sources.

An operator, a schedule, a demand-response event or any other source (``CommandRequest.source``)
may each hold one limit on a device (per set of command parameters, such as an OCPP connector
and purpose). The most restrictive active limit is the one the device is given; when a limit
expires (``expires_at``) or its source clears it, the next most restrictive one takes over, and
when none is left the device's limit is cleared. Limits compare in kW; a percentage is turned
into kW with the device's rating, and without a rating percentages compare only with each
other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandType

Channel = tuple[str, str]
"""A device and the JSON of the parameters its limits apply under."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One source's limit on a channel."""

    source: str
    value: float
    unit: str
    """``kW``, or ``%`` on a device without a rating."""
    expires_at: datetime | None
    request: CommandRequest

    def active(self, now: datetime) -> bool:
        """Whether the limit still holds at ``now``."""
        return self.expires_at is None or self.expires_at > now


def channel_of(device_id: str, parameters: dict[str, Any]) -> Channel:
    """The channel a limit command acts on."""
    return device_id, json.dumps(parameters, sort_keys=True)


def claim_of(request: CommandRequest, rated_kw: float | None) -> Claim:
    """The limit a ``set_power_limit`` request claims, in kW when it can be."""
    if request.value is None:
        raise InvalidRequestError("value", "set_power_limit needs a value")
    value, unit = request.value, request.unit
    if unit == "%" and rated_kw is not None:
        value, unit = request.value / 100 * rated_kw, "kW"
    elif unit == "W":
        value, unit = request.value / 1000, "kW"
    return Claim(request.source, value, unit, request.expires_at, request)


class LimitBook:
    """The limits each source holds on each channel."""

    def __init__(self) -> None:
        self._claims: dict[Channel, dict[str, Claim]] = {}

    def claim(self, channel: Channel, claim: Claim) -> None:
        """Set (or replace) a source's limit; 422 when it cannot be compared with the others."""
        others = [c for c in self._claims.get(channel, {}).values() if c.source != claim.source]
        if any(other.unit != claim.unit for other in others):
            raise InvalidRequestError(
                "unit",
                f"a limit in {claim.unit} cannot be compared with the {others[0].unit} limit "
                f"of {others[0].source!r} on this device (give it a rating, or use one unit)",
            )
        self._claims.setdefault(channel, {})[claim.source] = claim

    def release(self, channel: Channel, source: str) -> None:
        """Drop a source's limit (if it holds one)."""
        claims = self._claims.get(channel, {})
        claims.pop(source, None)
        if not claims:
            self._claims.pop(channel, None)

    def effective(self, channel: Channel, now: datetime) -> Claim | None:
        """The most restrictive active limit on a channel, if any."""
        active = [c for c in self._claims.get(channel, {}).values() if c.active(now)]
        return min(active, key=lambda c: c.value, default=None)

    def expire(self, now: datetime) -> list[Channel]:
        """Drop limits past their expiry; the channels that lost one."""
        changed = []
        for channel, claims in list(self._claims.items()):
            lapsed = [source for source, c in claims.items() if not c.active(now)]
            for source in lapsed:
                self.release(channel, source)
            if lapsed:
                changed.append(channel)
        return changed

    def next_expiry(self) -> datetime | None:
        """When the next limit lapses."""
        times = [
            c.expires_at
            for claims in self._claims.values()
            for c in claims.values()
            if c.expires_at is not None
        ]
        return min(times, default=None)

    def holders(self, channel: Channel) -> list[Claim]:
        """Every limit on a channel, most restrictive first."""
        return sorted(self._claims.get(channel, {}).values(), key=lambda c: c.value)


def applied(claim: Claim | None, base: CommandRequest) -> CommandRequest:
    """The command that gives a device ``claim`` (or, with None, clears its limit)."""
    if claim is None:
        return base.model_copy(
            update={"command": CommandType.CLEAR_POWER_LIMIT, "value": None, "expires_at": None}
        )
    return base.model_copy(
        update={
            "command": CommandType.SET_POWER_LIMIT,
            "value": claim.request.value,
            "unit": claim.request.unit,
            "expires_at": None,
        }
    )
