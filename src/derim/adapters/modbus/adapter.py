"""The Modbus adapter: polls one device through its profile and writes its control points."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from derim.adapters.base import (
    PollingAdapter,
    PollSettings,
    canonical_reading,
    read_back_result,
    requested_value,
)
from derim.adapters.modbus.codec import (
    MISSING,
    ReadRequest,
    decode_point,
    decode_reading,
    encode_write,
    plan_reads,
)
from derim.adapters.modbus.profile import ControlPoint, Profile
from derim.adapters.modbus.transport import ModbusTransport
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandResult
from derim.models.common import Quality
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE, DERTelemetry

log = logging.getLogger(__name__)

READ_BACK_TOLERANCE = 1e-6
"""Relative difference allowed between a written and a read-back value."""


class ModbusAdapter(PollingAdapter):
    """One device (unit id) behind a Modbus TCP endpoint, described by a device profile."""

    protocol = "modbus"

    def __init__(
        self,
        device_id: str,
        profile: Profile,
        transport: ModbusTransport,
        unit_id: int,
        settings: PollSettings | None = None,
    ) -> None:
        super().__init__(device_id, settings)
        self.profile = profile
        self.transport = transport
        self.line = transport.key
        self.unit_id = unit_id
        self._plan: list[ReadRequest] = plan_reads(
            profile.points, profile.read.max_registers, profile.read.max_gap
        )
        self._telemetry = TELEMETRY_BY_DEVICE_TYPE[profile.device_type]
        self._unmapped_reported: set[str] = set()
        """Points whose unmapped enum code has been logged as a warning already."""

    async def connect(self) -> None:
        """Open (or reuse) the endpoint's connection."""
        await self.transport.connect()

    async def disconnect(self) -> None:
        """Nothing: the shared transport reopens its connection itself when it is dead."""

    async def aclose(self) -> None:
        """Close the transport (the manager calls this only for its last device)."""
        self.transport.close()

    async def read_once(self) -> Sequence[DERTelemetry]:
        """Run the read plan and decode one canonical reading (scale factors from this poll).

        An enum code the profile does not map reads as unknown and flags the reading
        ``questionable`` (the device shows as degraded) instead of failing the poll.
        """
        image = {req: await self.transport.read(req, self.unit_id) for req in self._plan}
        decoded = decode_reading(self.profile, image)
        values: dict[str, object] = dict(decoded.fields)
        if decoded.unmapped:
            values["quality"] = Quality.QUESTIONABLE
            self._report_unmapped(decoded.unmapped)
        return [canonical_reading(self._telemetry, self.device_id, values)]

    def _report_unmapped(self, unmapped: Mapping[str, int]) -> None:
        """Log each point's first unmapped enum code as a warning, later ones at debug."""
        for name, code in unmapped.items():
            first = name not in self._unmapped_reported
            self._unmapped_reported.add(name)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "device %s: %s code %d is not in the profile's enum map; reading it as unknown",
                self.device_id,
                name,
                code,
            )

    def check(self, command: CommandRequest) -> tuple[ControlPoint, list[int]]:
        """The control point and registers ``command`` would write; ``InvalidRequestError`` if
        no point carries it out or the value is outside the point's limits."""
        point = self._control(command)
        value = requested_value(command, point.name, point.unit, point.choices is not None)
        return point, encode_write(point, value)

    def validate(self, command: CommandRequest) -> None:
        """Check that a control point carries out ``command`` within its limits."""
        self.check(command)

    async def send(self, command: CommandRequest) -> CommandResult:
        """Write the command's control point, then read it back.

        The result is acknowledged only when the read-back matches; a Modbus exception raises
        ``DeviceRejected``, and a mismatch gives a failed result naming both values.
        """
        point, registers = self.check(command)
        await self.transport.write(point.address, registers, self.unit_id)
        request = ReadRequest("holding", point.unit_id, point.address, point.count)
        echoed = decode_point(await self.transport.read(request, self.unit_id), point)
        written = decode_point(registers, point)
        if echoed is MISSING or not _same(echoed, written):
            message = f"{point.name}: wrote {written!r}, device reads back {echoed!r}"
            return read_back_result(self.device_id, command, False, message)
        return read_back_result(self.device_id, command, True, f"{point.name} set and read back")

    def _control(self, command: CommandRequest) -> ControlPoint:
        name = command.parameters.get("point")
        for point in self.profile.controls:
            if point.name == name or (name is None and command.command in point.commands):
                return point
        known = ", ".join(
            f"{p.name} ({', '.join(p.commands) or '-'})" for p in self.profile.controls
        )
        raise InvalidRequestError(
            "command", f"no control point carries out {command.command.value} (known: {known})"
        )

    async def release(self) -> None:
        """Nothing to undo: the adapter keeps no control active on its own."""


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=READ_BACK_TOLERANCE, abs_tol=READ_BACK_TOLERANCE)
    return a == b
