"""The SunSpec adapter: discovers a device's model map over Modbus TCP, then polls its models.

Discovery finds the 'SunS' marker at 40000, 0 or 50000 (a candidate that times out or answers
with an exception does not end the search) and walks the model chain. Every poll reads each model
DERIM maps in full, so scale factors always come from the same read as the values they scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from derim.adapters.base import (
    PollingAdapter,
    PollSettings,
    canonical_reading,
    read_back_result,
)
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
from derim.models.command import CommandRequest, CommandResult
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
        self._polled: list[tuple[int, frozenset[str], list[ReadRequest]]] = []
        """Each mapped model once: its id, the points DERIM decodes and the reads that fetch it."""
        self._telemetry = TELEMETRY_BY_DEVICE_TYPE[device_type]
        self._fields = frozenset(self._telemetry.model_fields)

    async def connect(self) -> None:
        """Connect and (re)discover the model map: a restarted device may have a new one."""
        await self.transport.connect()
        self.models = await self.discover()
        self._polled = _read_plan(self.models)

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
        return await self._run(_requests(address, count))

    async def _run(self, requests: Sequence[ReadRequest]) -> list[int]:
        registers: list[int] = []
        for request in requests:
            registers += await self.transport.read(request, self.unit_id)
        return registers

    async def read_once(self) -> Sequence[DERTelemetry]:
        """Read every mapped model once and map it to one canonical reading.

        A model the device refuses or garbles is left out and the reading is flagged
        ``questionable`` (the device shows as degraded); if every model fails, the poll fails.
        """
        decoded: dict[int, DecodedBlock] = {}
        failures: list[AdapterError] = []
        for model_id, points, requests in self._polled:
            try:
                decoded[model_id] = decode_model(model_id, await self._run(requests), points)
            except (DeviceRejected, ProtocolError) as exc:
                failures.append(exc)
        if failures and not decoded:
            raise failures[0]
        values: dict[str, object] = dict(to_canonical(decoded, self._fields))
        if failures:
            values["quality"] = Quality.QUESTIONABLE
        return [canonical_reading(self._telemetry, self.device_id, values)]

    def validate(self, command: CommandRequest) -> None:
        """Check that the device has a control model for ``command`` and that its value fits."""
        model_id = controls.choose_model(command, {entry.model_id for entry in self.models})
        controls.check(command, model_id, self.rated_power_kw)

    async def send(self, command: CommandRequest) -> CommandResult:
        """Write the command's control points, then read the model back to confirm.

        Values are scaled by the device's own scale factors, read just before writing; the
        result is acknowledged only when every point reads back as written.
        """
        self.validate(command)
        entry = self._entry(controls.choose_model(command, {e.model_id for e in self.models}))
        size = HEADER_SIZE + entry.length
        current = decode_model(entry.model_id, await self._read(entry.address, size))
        written = controls.targets(command, entry.model_id, current, self.rated_power_kw)
        for path, value in written.items():
            registers = controls.encode(entry.model_id, path, value, current)
            address = entry.address + controls.locate(entry.model_id, path).offset
            await self.transport.write(address, registers, self.unit_id)
        after = decode_model(entry.model_id, await self._read(entry.address, size))
        wrong = controls.read_back_matches(entry.model_id, written, after)
        shown = ", ".join(f"{path}={value:g}" for path, value in written.items())
        if wrong:
            message = f"model {entry.model_id} wrote {shown}; device reads back {wrong}"
            return read_back_result(self.device_id, command, False, message)
        message = f"model {entry.model_id} {shown} set and read back"
        return read_back_result(self.device_id, command, True, message)

    def _entry(self, model_id: int) -> ModelEntry:
        for entry in self.models:
            if entry.model_id == model_id:
                return entry
        raise InvalidRequestError("command", f"the device has no SunSpec model {model_id}")

    async def release(self) -> None:
        """Nothing to undo: this adapter sends no controls."""


def _requests(address: int, count: int) -> list[ReadRequest]:
    """Holding-register reads covering ``count`` registers from ``address``, 125 at most each."""
    return [
        ReadRequest("holding", None, start, min(MAX_READ, address + count - start))
        for start in range(address, address + count, MAX_READ)
    ]


def _read_plan(models: Sequence[ModelEntry]) -> list[tuple[int, frozenset[str], list[ReadRequest]]]:
    """The models of ``models`` that feed canonical telemetry (each once), their points and
    reads."""
    plan: list[tuple[int, frozenset[str], list[ReadRequest]]] = []
    for entry in models:
        points = POLLED_POINTS.get(entry.model_id)
        if points is not None and all(model_id != entry.model_id for model_id, _, _ in plan):
            plan.append(
                (entry.model_id, points, _requests(entry.address, HEADER_SIZE + entry.length))
            )
    return plan
