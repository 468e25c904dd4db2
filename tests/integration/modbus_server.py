"""A real pymodbus TCP server on loopback whose holding registers a test sets between polls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


class RegisterServer:
    """One Modbus unit with ``size`` holding registers from address 0, served on a free port."""

    def __init__(self, unit_id: int = 1, size: int = 256) -> None:
        self.unit_id = unit_id
        self.size = size
        self.port = 0
        self.exception: ExcCodes | None = None
        """When set, every request is answered with this Modbus exception."""
        self.writes: list[tuple[int, list[int]]] = []
        self.reads: list[tuple[int, int]] = []
        self._pending: list[tuple[int, list[int]]] = []
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None

    def set(self, address: int, registers: Sequence[int]) -> None:
        """Make the device hold ``registers`` from ``address`` on (from the next request on)."""
        self._pending.append((address, list(registers)))

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        for at, registers in self._pending:
            current[at - start_address : at - start_address + len(registers)] = registers
        self._pending.clear()
        if self.exception is not None:
            return self.exception
        if set_values is None:
            self.reads.append((address, count))
        else:
            self.writes.append((address, [int(v) for v in set_values]))
        return None

    async def start(self) -> RegisterServer:
        """Listen on 127.0.0.1 (the same port again after a ``stop``)."""
        device = SimDevice(
            id=self.unit_id,
            simdata=[SimData(address=0, count=self.size, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        self._task = asyncio.create_task(self._server.serve_forever(), name="modbus-server")
        async with asyncio.timeout(10):
            while self._server.transport is None:  # noqa: ASYNC110 - pymodbus has no ready event
                await asyncio.sleep(0.01)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop the connections (the device goes dead)."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
