"""Arbitration of power limits from several sources, on a simulated charger through the real
central system: the most restrictive active limit applies, and expiry or a clear restores the
next one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocpp_helpers import central, simulated

from async_helpers import until
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.services import Services


def limit(value: float, source: str, expires_in_s: float | None = None) -> CommandRequest:
    """A charger-wide power limit (kW) from ``source``."""
    expires = None
    if expires_in_s is not None:
        expires = datetime.now(UTC) + timedelta(seconds=expires_in_s)
    return CommandRequest(
        command=CommandType.SET_POWER_LIMIT, value=value, source=source, expires_at=expires
    )


def clear(source: str) -> CommandRequest:
    """A source's clear of its charger-wide limit."""
    return CommandRequest(command=CommandType.CLEAR_POWER_LIMIT, source=source)


async def commands_of(services: Services, device_id: str) -> list[tuple[str, str]]:
    """(source, status) of a device's commands, oldest first."""
    records = await services.controller.store.for_device(device_id)
    return [(r.request.source, r.status.value) for r in reversed(records)]


async def test_the_most_restrictive_limit_applies_and_expiry_restores_the_next(
    tmp_path: Path,
) -> None:
    """Operator 7 kW, then a demand-response event of 4 kW for a moment: the charger runs at
    4 kW, back at 7 kW when the event lapses (a command DERIM records itself), at 7 kW still
    when a looser schedule limit arrives, and at full power once every source cleared."""
    async with (
        central(tmp_path) as services,
        simulated(services, "CP-arb", max_power_kw=22.0) as sim,
    ):
        controller = services.controller
        await sim.plug_in(1, ev_max_kw=22.0)
        await until(lambda: sim.power_kw() > 20)
        first = await controller.submit("CP-arb", limit(7.0, "operator"))
        assert first.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: abs(sim.power_kw() - 7.0) < 0.05)
        event = await controller.submit("CP-arb", limit(4.0, "dr-event", expires_in_s=1.5))
        assert "effective limit 4 kW, from dr-event" in event.message
        await until(lambda: abs(sim.power_kw() - 4.0) < 0.05)
        await until(lambda: abs(sim.power_kw() - 7.0) < 0.05, timeout_s=10)
        looser = await controller.submit("CP-arb", limit(11.0, "schedule"))
        assert "effective limit 7 kW, from operator" in looser.message
        assert abs(sim.power_kw() - 7.0) < 0.05
        await controller.submit("CP-arb", clear("operator"))
        await until(lambda: abs(sim.power_kw() - 11.0) < 0.05)
        last = await controller.submit("CP-arb", clear("schedule"))
        assert last.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: sim.power_kw() > 20)
        assert await commands_of(services, "CP-arb") == [
            ("operator", "acknowledged"),
            ("dr-event", "acknowledged"),
            ("arbitration", "acknowledged"),
            ("schedule", "acknowledged"),
            ("operator", "acknowledged"),
            ("schedule", "acknowledged"),
        ]


async def test_limits_in_units_that_cannot_be_compared_are_refused(tmp_path: Path) -> None:
    """On a charger without a rating a percentage cannot be weighed against kW: 422, and the
    limit already held stays in force."""
    async with central(tmp_path) as services, simulated(services, "CP-units"):
        controller = services.controller
        await controller.submit("CP-units", limit(5.0, "operator"))
        percent = CommandRequest(
            command=CommandType.SET_POWER_LIMIT, value=50, unit="%", source="schedule"
        )
        with pytest.raises(InvalidRequestError):
            await controller.submit("CP-units", percent)
        channel = ("CP-units", "{}")
        assert [c.source for c in controller.limits.holders(channel)] == ["operator"]
