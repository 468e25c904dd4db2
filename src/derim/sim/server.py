"""A pymodbus TCP server on loopback whose units' registers code can set while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from derim.tasks import cancel_and_wait


class SimUnit:
    """One unit id's registers (holding and input share one space from address 0)."""

    def __init__(self, unit_id: int, size: int) -> None:
        self.unit_id = unit_id
        self.size = size
        self.exception: ExcCodes | None = None
        """When set, every request to this unit is answered with this Modbus exception."""
        self.failing: list[range] = []
        """Addresses whose requests are answered with ``SERVER_DEVICE_FAILURE``."""
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, list[int]]] = []
        self.registers: list[int] | None = None
        """The live register list, once the server has handled a first request."""
        self._pending: list[tuple[int, list[int]]] = []

    def set(self, address: int, registers: Sequence[int]) -> None:
        """Hold ``registers`` from ``address`` on, from the next request."""
        self._pending.append((address, list(registers)))

    async def handle(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus ``action`` hook: apply pending values, inject exceptions, log requests."""
        self.registers = current
        for at, registers in self._pending:
            current[at - start_address : at - start_address + len(registers)] = registers
        self._pending.clear()
        if self.exception is not None:
            return self.exception
        if any(address in failing for failing in self.failing):
            return ExcCodes.DEVICE_FAILURE
        if set_values is None:
            self.reads.append((address, count))
        else:
            self.writes.append((address, [int(v) for v in set_values]))
        return None


class SimServer:
    """Serves ``units`` on 127.0.0.1 (a free port, kept across stop/start)."""

    def __init__(self, units: Sequence[SimUnit]) -> None:
        self.units = {unit.unit_id: unit for unit in units}
        self.port = 0
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> SimServer:
        """Listen, and return once the port is known."""
        devices = [
            SimDevice(
                id=unit.unit_id,
                simdata=[
                    SimData(address=0, count=unit.size, values=0, datatype=DataType.REGISTERS)
                ],
                action=unit.handle,
            )
            for unit in self.units.values()
        ]
        self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        self._task = asyncio.create_task(self._server.serve_forever(), name="derim-sim-server")
        async with asyncio.timeout(10):
            while self._server.transport is None:  # noqa: ASYNC110 - pymodbus has no ready event
                await asyncio.sleep(0.01)
        listener = self._server.transport
        if not isinstance(listener, asyncio.Server):
            raise RuntimeError("pymodbus did not open a TCP listener")
        self.port = int(listener.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and drop connections (the devices go dead)."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus lacks hints
            self._server = None
        task, self._task = self._task, None
        await cancel_and_wait(task)
