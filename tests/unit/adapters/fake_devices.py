"""A polling-adapter double for engine tests: a device at the transport seam that reads one
power value and takes no commands."""

from __future__ import annotations

from datetime import UTC, datetime

from derim.adapters.base import PollingAdapter
from derim.errors import TransportError
from derim.models.command import CommandRequest, CommandResult
from derim.models.telemetry import DERTelemetry


class ReadOnlyDevice(PollingAdapter):
    """Subclasses decide how reads behave; commands are refused, ``release`` is recorded."""

    protocol = "fake"
    released = False

    def reading(self) -> list[DERTelemetry]:
        """One reading of 1 kW, stamped now."""
        return [DERTelemetry(device_id=self.device_id, timestamp=datetime.now(UTC), power_kw=1.0)]

    def validate(self, command: CommandRequest) -> None:
        raise TransportError("the fake device takes no commands")

    async def send(self, command: CommandRequest) -> CommandResult:
        raise TransportError("the fake device takes no commands")

    async def release(self) -> None:
        self.released = True
