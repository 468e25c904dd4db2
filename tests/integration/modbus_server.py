"""One simulated Modbus unit on its own TCP server or serial line, for adapter tests
(``derim.sim`` does the work)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from derim.sim.server import SimServer, SimUnit


class RegisterServer(SimServer):
    """A server with a single unit whose registers, exceptions and request log tests reach."""

    def __init__(self, unit_id: int = 1, size: int = 256) -> None:
        self.unit = SimUnit(unit_id, size)
        super().__init__([self.unit])

    def set(self, address: int, registers: Sequence[int]) -> None:
        """Hold ``registers`` from ``address`` on, from the next request."""
        self.unit.set(address, registers)

    @property
    def exception(self) -> ExcCodes | None:
        """The exception every request gets, or None."""
        return self.unit.exception

    @exception.setter
    def exception(self, code: ExcCodes | None) -> None:
        self.unit.exception = code

    @property
    def reads(self) -> list[tuple[int, int]]:
        """(address, count) of every read served."""
        return self.unit.reads

    @property
    def writes(self) -> list[tuple[int, list[int]]]:
        """(address, registers) of every write served."""
        return self.unit.writes

    async def start(self) -> RegisterServer:
        """Listen (on the same port again after a stop)."""
        await super().start()
        return self


class RtuServer:
    """Serves ``unit`` over Modbus RTU on the serial device ``port`` (a pseudo-terminal end)."""

    def __init__(self, unit: SimUnit, port: str, baudrate: int = 19200) -> None:
        self.unit = unit
        device = SimDevice(
            id=unit.unit_id,
            simdata=[SimData(address=0, count=unit.size, values=0, datatype=DataType.REGISTERS)],
            action=functools.partial(SimUnit.handle, unit),
        )
        self._server = ModbusSerialServer(device, port=port, baudrate=baudrate)

    async def start(self) -> RtuServer:
        """Open the serial port and answer requests in the background."""
        await self._server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        """Close the serial port."""
        await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus lacks hints
