"""The SunSpec adapter: discovers a device's model map over Modbus TCP, then polls its models.

Discovery finds the 'SunS' marker at 40000, 0 or 50000 (a candidate that times out or answers
with an exception does not end the search) and walks the model chain. Every poll reads each model
DERIM maps in full, so scale factors always come from the same read as the values they scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from derim.adapters.base import PollingAdapter, PollSettings, canonical_reading
from derim.adapters.modbus.codec import ReadRequest
from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec import controls
from derim.adapters.sunspec.decode import (
    POLLED_POINTS,
    DecodedBlock,
    decode_model,
    to_canonical,
)
from derim.adapters.sunspec.discovery import (
    BASE_ADDRESSES,
    MARKER,
    ChainWalker,
    ModelEntry,
    is_marker,
)
from derim.adapters.sunspec.models import HEADER_SIZE
from derim.errors import AdapterError, DeviceRejected, InvalidRequestError, ProtocolError
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.models.common import DeviceType, Quality
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE, DERTelemetry

MAX_READ = 125
"""Registers per Modbus read (the protocol's limit for function 3)."""


class SunSpecAdapter(PollingAdapter):
    """One SunSpec device (PV inverter or battery) behind a Modbus TCP endpoint."""

    protocol = "sunspec"

    def __init__(
        self,
        device_id: str,
        device_type: DeviceType,
        transport: ModbusTransport,
        unit_id: int,
        settings: PollSettings | None = None,
        rated_power_kw: float | None = None,
    ) -> None:
        super().__init__(device_id, settings)
        self.rated_power_kw = rated_power_kw
        """Nameplate power (kW), for limits given in kW."""
        if device_type not in (DeviceType.SOLAR_PV, DeviceType.BATTERY):
            raise InvalidRequestError("device_type", "a SunSpec device is solar_pv or battery")
        self.transport = transport
        self.line = transport.key
        self.unit_id = unit_id
        self.models: list[ModelEntry] = []
        self._telemetry = TELEMETRY_BY_DEVICE_TYPE[device_type]
        self._fields = frozenset(self._telemetry.model_fields)

    async def connect(self) -> None:
        """Connect and (re)discover the model map: a restarted device may have a new one."""
        await self.transport.connect()
        self.models = await self.discover()

    async def disconnect(self) -> None:
        """Nothing: the shared transport reopens its connection itself when it is dead."""

    async def aclose(self) -> None:
        """Close the transport (the manager calls this only for its last device)."""
        self.transport.close()

    async def discover(self) -> list[ModelEntry]:
        """The device's model map; ``ProtocolError`` when no base holds a valid chain."""
        base = await self._find_base()
        walker = ChainWalker(base)
        while walker.next_address is not None:
            walker.feed(await self._read(walker.next_address, HEADER_SIZE))
        if not any(entry.model_id in POLLED_POINTS for entry in walker.models):
            found = [entry.model_id for entry in walker.models]
            raise ProtocolError(f"no SunSpec model DERIM maps among {found}")
        return walker.models

    async def _find_base(self) -> int:
        for base in BASE_ADDRESSES:
            try:
                marker = await self._read(base, len(MARKER))
            except (DeviceRejected, TimeoutError):
                continue
            if is_marker(marker):
                return base
        raise ProtocolError(f"no SunSpec marker 'SunS' at any of {list(BASE_ADDRESSES)}")

    async def _read(self, address: int, count: int) -> list[int]:
        registers: list[int] = []
        for start in range(address, address + count, MAX_READ):
            size = min(MAX_READ, address + count - start)
            request = ReadRequest("holding", None, start, size)
            registers += await self.transport.read(request, self.unit_id)
        return registers

    async def read_once(self) -> Sequence[DERTelemetry]:
        """Read every mapped model once and map it to one canonical reading.

        A model the device refuses or garbles is left out and the reading is flagged
        ``questionable`` (the device shows as degraded); if every model fails, the poll fails.
        """
        decoded: dict[int, DecodedBlock] = {}
        failures: list[AdapterError] = []
        for entry in self.models:
            points = POLLED_POINTS.get(entry.model_id)
            if points is None or entry.model_id in decoded:
                continue
            try:
                registers = await self._read(entry.address, HEADER_SIZE + entry.length)
                decoded[entry.model_id] = decode_model(entry.model_id, registers, points)
            except (DeviceRejected, ProtocolError) as exc:
                failures.append(exc)
        if failures and not decoded:
            raise failures[0]
        values: dict[str, object] = {
            name: value for name, value in to_canonical(decoded).items() if name in self._fields
        }
        if failures:
            values["quality"] = Quality.QUESTIONABLE
        return [canonical_reading(self._telemetry, self.device_id, values)]

    def validate(self, command: CommandRequest) -> None:
        """Check a command against model 123's presence and 0-100 % of rating."""
        controls.limit_percent(command, self.rated_power_kw)
        self._controls_entry()

    async def send(self, command: CommandRequest) -> CommandResult:
        """Write model 123 points, then read the model back to confirm.

        The limit is scaled by the device's own ``WMaxLimPct_SF``, read just before writing.
        """
        percent = controls.limit_percent(command, self.rated_power_kw)
        entry = self._controls_entry()
        block = await self._read(entry.address, HEADER_SIZE + entry.length)
        current = decode_model(controls.CONTROLS_MODEL, block)
        written = controls.control_writes(command, percent, current)
        for name, raw in written.items():
            address = entry.address + controls.point_offset(name)
            await self.transport.write(address, [raw & 0xFFFF], self.unit_id)
        after = decode_model(
            controls.CONTROLS_MODEL, await self._read(entry.address, HEADER_SIZE + entry.length)
        )
        sf = current.get("WMaxLimPct_SF")
        result = CommandResult(device_id=self.device_id, request=command)
        if controls.read_back_matches(written, after, sf if isinstance(sf, int) else 0):
            result.status = CommandStatus.ACKNOWLEDGED
            result.message = f"model 123 {', '.join(written)} set and read back"
        else:
            result.status = CommandStatus.FAILED
            shown = {name: after.get(name) for name in written}
            result.message = f"model 123 wrote {written}, device reads back {shown}"
        result.history.append((result.status, datetime.now(UTC)))
        return result

    def _controls_entry(self) -> ModelEntry:
        for entry in self.models:
            if entry.model_id == controls.CONTROLS_MODEL:
                return entry
        raise InvalidRequestError("command", "the device has no SunSpec model 123 (controls)")

    async def release(self) -> None:
        """Nothing to undo: this adapter sends no controls."""
