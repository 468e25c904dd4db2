"""Modbus I/O over TCP or RTU serial on pymodbus's async clients; pymodbus errors become DERIM
errors here.

One ``ModbusTransport`` serves every unit id behind one TCP endpoint (a gateway) or one serial
line, one request at a time, callers served in arrival order: RTU is half-duplex and many gateways
do not pipeline transactions. A caller that stops waiting before its turn (a poll that timed out
in the queue) leaves unsent, so an overloaded line sheds work instead of piling it up. The
transport manages its own connection: one unit timing out or refusing does not close it for the
others; ``FAILURES_BEFORE_RECONNECT`` transport failures in a row (a connection that looks open but
is dead), or a request cut off mid-way, close it, and the next request opens a fresh one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from derim.adapters.modbus.codec import ReadRequest
from derim.errors import DeviceRejected, TransportError

T = TypeVar("T")
FAILURES_BEFORE_RECONNECT = 3
"""Consecutive transport failures, across all units, after which the connection is reopened."""

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusTransport:
    """Reads and writes registers through one pymodbus client (a TCP endpoint or a serial line)."""

    def __init__(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient, key: str) -> None:
        self.key = key
        """The endpoint, such as ``tcp://10.0.0.5:502`` or ``rtu:///dev/ttyUSB0``."""
        self._client = client
        self._busy = False
        """Whether a request holds the line (a caller owns it or is being handed it)."""
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._connect_lock = asyncio.Lock()
        self._failures = 0

    @classmethod
    def tcp(cls, host: str, port: int, *, timeout_s: float = 2.0) -> ModbusTransport:
        """A Modbus TCP endpoint (pymodbus's own reconnects are off: the poller decides)."""
        client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0
        )
        return cls(client, f"tcp://{host}:{port}")

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_s: float = 2.0,
    ) -> ModbusTransport:
        """A Modbus RTU serial line."""
        client = AsyncModbusSerialClient(
            serial_port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        return cls(client, f"rtu://{serial_port}")

    @property
    def connected(self) -> bool:
        """Whether the connection (socket or serial port) is open."""
        return bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection unless it is open; ``TransportError`` when refused or timed out.

        Devices sharing the transport may call this at once: one of them connects, the others
        wait for it.
        """
        async with self._connect_lock:
            if self.connected:
                return
            try:
                opened = await self._client.connect()
            except (ModbusException, OSError) as exc:
                raise TransportError(f"modbus {self.key}: {exc}") from exc
            if not opened:
                raise TransportError(f"modbus {self.key}: connection failed")
            self._failures = 0

    def close(self) -> None:
        """Close the connection (the next ``connect`` opens a fresh one)."""
        self._client.close()

    async def read(self, request: ReadRequest, unit_id: int) -> list[int]:
        """The registers of one planned read; ``DeviceRejected`` carries the exception code."""
        if request.unit_id is not None:
            unit_id = request.unit_id
        read = (
            self._client.read_holding_registers
            if request.register_type == "holding"
            else self._client.read_input_registers
        )
        try:
            response = await self._exclusive(
                lambda: read(request.address, count=request.count, device_id=unit_id)
            )
        except (ModbusException, OSError) as exc:
            raise self._failed(exc) from exc
        self._failures = 0
        if response.isError():
            raise _rejected(response.exception_code, f"read {request.address}+{request.count}")
        registers: list[int] = list(response.registers)
        return registers

    async def write(self, address: int, values: list[int], unit_id: int) -> None:
        """Write holding registers (function 16)."""
        try:
            response = await self._exclusive(
                lambda: self._client.write_registers(address, values, device_id=unit_id)
            )
        except (ModbusException, OSError) as exc:
            raise self._failed(exc) from exc
        self._failures = 0
        if response.isError():
            raise _rejected(response.exception_code, f"write {address}")

    async def _exclusive(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run one request alone on the connection, after the callers that came before.

        A request cut off mid-way (its caller cancelled) closes the connection, so that its late
        answer cannot meet the next request; the next request reconnects.
        """
        if self._busy:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_over()  # handed the line just as the caller gave up
                raise
        task = asyncio.current_task()
        requested = 0 if task is None else task.cancelling()
        self._busy = True
        try:
            if not self.connected:
                await self.connect()
            result = await request()
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            self._hand_over()
        if task is not None and task.cancelling() > requested:
            # Python 3.11's wait_for (inside pymodbus) drops a cancellation that meets an answer.
            raise asyncio.CancelledError
        return result

    def _hand_over(self) -> None:
        """Give the line to the first caller still waiting, or free it."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False

    def _failed(self, exc: BaseException) -> TransportError:
        """Count a transport failure; reopen the connection after too many in a row."""
        self._failures += 1
        if self._failures >= FAILURES_BEFORE_RECONNECT:
            self._failures = 0
            self.close()
        return TransportError(f"modbus {self.key}: {exc}")


def _rejected(code: int, what: str) -> DeviceRejected:
    name = EXCEPTION_NAMES.get(code, "unknown exception")
    return DeviceRejected(f"modbus exception {code} ({name}) on {what}")
