"""ModbusTransport's line discipline: one request at a time, in arrival order, cancel-safe."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

import pytest

from derim.adapters.modbus.codec import ReadRequest
from derim.adapters.modbus.transport import FAILURES_BEFORE_RECONNECT, ModbusTransport
from derim.errors import TransportError

KEY = "tcp://10.0.0.5:502"
UNIT = 1
DEADLINE_S = 5.0
"""Bound on each test's waiting, so that a line that never frees fails the test, not the run."""


class FakeResponse:
    """What pymodbus returns for a request: registers, or an exception response."""

    def __init__(self, registers: list[int], exception_code: int = 0) -> None:
        self.registers = registers
        self.exception_code = exception_code

    def isError(self) -> bool:  # noqa: N802 - pymodbus's name
        return self.exception_code != 0


class FakeClient:
    """A pymodbus client double; the test holds requests and connects open with events.

    A read of ``count`` registers at ``address`` answers ``address, address + 1, ...`` so every
    caller can tell its own answer from another's.
    """

    def __init__(self) -> None:
        self._connected = False
        self.connect_results: list[bool] = []
        """Results of the next connects (True when empty)."""
        self.connect_gate: asyncio.Event | None = None
        self.connects = 0
        self.closes = 0
        self.log: list[str] = []
        """What reached the line, in order: connect, close, ``send <address>``."""
        self.gates: dict[int, asyncio.Event] = {}
        """Requests to these addresses wait for the event before answering."""
        self.arrived: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        """Set when a request to the address reaches the line."""
        self.swallow: set[int] = set()
        """Requests to these addresses answer even when cancelled (3.11's ``wait_for``)."""
        self.errors: dict[int, Exception] = {}
        self.on_answer: dict[int, Callable[[], object]] = {}
        """Called just before the request to the address answers."""
        self.in_flight = 0
        self.peak_in_flight = 0
        self.cancelled: list[int] = []

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> bool:
        self.connects += 1
        self.log.append("connect")
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        self._connected = self.connect_results.pop(0) if self.connect_results else True
        return self._connected

    def close(self) -> None:
        self.closes += 1
        self.log.append("close")
        self._connected = False

    async def read_holding_registers(
        self, address: int, count: int = 1, device_id: int = 1
    ) -> FakeResponse:
        return await self._request(address, list(range(address, address + count)))

    async def read_input_registers(
        self, address: int, count: int = 1, device_id: int = 1
    ) -> FakeResponse:
        return await self._request(address, list(range(address, address + count)))

    async def write_registers(
        self, address: int, values: list[int], device_id: int = 1
    ) -> FakeResponse:
        return await self._request(address, [])

    async def _request(self, address: int, registers: list[int]) -> FakeResponse:
        assert self._connected, "request sent on a closed connection"
        self.log.append(f"send {address}")
        self.arrived[address].set()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            gate = self.gates.get(address)
            if gate is not None:
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    self.cancelled.append(address)
                    if address not in self.swallow:
                        raise
            else:
                await asyncio.sleep(0)  # answers take a turn of the loop, as on a real line
            if address in self.errors:
                raise self.errors[address]
            hook = self.on_answer.get(address)
            if hook is not None:
                hook()
            return FakeResponse(registers)
        finally:
            self.in_flight -= 1


def holding(address: int, count: int = 2) -> ReadRequest:
    return ReadRequest("holding", None, address, count)


def sent(client: FakeClient) -> list[int]:
    """Addresses of the requests that reached the line, in order."""
    return [int(entry.split()[1]) for entry in client.log if entry.startswith("send")]


async def settle() -> None:
    """Let every ready task run until it blocks (joins the queue for the line, say)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def transport(client: FakeClient) -> ModbusTransport:
    return ModbusTransport(client, KEY)  # type: ignore[arg-type]


async def test_requests_run_one_at_a_time_in_arrival_order(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """While one request holds the line the others queue; they are sent in the order they
    arrived (reads and writes alike), never two at once, and each gets its own answer."""
    client.gates[100] = asyncio.Event()
    first = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    queued: list[asyncio.Task[list[int]] | asyncio.Task[None]] = []
    for address in (200, 300):
        queued.append(asyncio.create_task(transport.read(holding(address), UNIT)))
        await settle()
    queued.append(asyncio.create_task(transport.write(400, [7], UNIT)))
    await settle()
    queued.append(asyncio.create_task(transport.read(ReadRequest("input", None, 500, 3), UNIT)))
    await settle()
    assert sent(client) == [100], "nothing else is sent while the first request holds the line"
    client.gates[100].set()
    async with asyncio.timeout(DEADLINE_S):
        results = await asyncio.gather(first, *queued)
    assert sent(client) == [100, 200, 300, 400, 500]
    assert results == [[100, 101], [200, 201], [300, 301], None, [500, 501, 502]]
    assert client.peak_in_flight == 1
    assert client.connects == 1, "the first request opened the connection for all"


async def test_late_arrival_does_not_overtake_callers_already_waiting(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A caller arriving just as the line is handed to the next waiting caller queues behind
    the waiting callers instead of taking the line first."""
    client.gates[100] = asyncio.Event()
    go = asyncio.Event()

    async def late_caller() -> list[int]:
        await go.wait()
        return await transport.read(holding(900), UNIT)

    late = asyncio.create_task(late_caller())
    first = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    waiting = [asyncio.create_task(transport.read(holding(a), UNIT)) for a in (200, 300)]
    await settle()
    client.on_answer[100] = go.set  # the late caller runs before the line's next owner does
    client.gates[100].set()
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(first, late, *waiting)
    assert sent(client) == [100, 200, 300, 900]


async def test_caller_cancelled_while_waiting_leaves_unsent(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A caller that gives up before its turn leaves the queue: its request is never sent, the
    connection stays open and the callers behind it are served."""
    client.gates[100] = asyncio.Event()
    first = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    quitter = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    behind = asyncio.create_task(transport.read(holding(300), UNIT))
    await settle()
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    client.gates[100].set()
    async with asyncio.timeout(DEADLINE_S):
        assert await first == [100, 101]
        assert await behind == [300, 301]
    assert sent(client) == [100, 300]
    assert client.closes == 0
    assert client.connects == 1


async def test_caller_cancelled_as_it_is_handed_the_line_passes_it_on(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A caller cancelled after the line was handed to it but before it ran leaves without
    sending and hands the line on, so the callers behind it are not stuck."""
    client.gates[100] = asyncio.Event()
    first = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    quitter = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    behind = asyncio.create_task(transport.read(holding(300), UNIT))
    await settle()
    # Runs after the first request hands the line to ``quitter`` and before ``quitter`` wakes.
    loop = asyncio.get_running_loop()
    client.on_answer[100] = lambda: loop.call_soon(quitter.cancel)
    client.gates[100].set()
    async with asyncio.timeout(DEADLINE_S):
        assert await first == [100, 101]
        with pytest.raises(asyncio.CancelledError):
            await quitter
        assert await behind == [300, 301]
    assert sent(client) == [100, 300]
    assert client.closes == 0


async def test_cancel_mid_request_closes_connection_and_next_request_reconnects(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A request cut off while its answer is awaited closes the connection before the line
    passes on, so the next request goes out on a fresh connection (and gets its own answer)."""
    client.gates[100] = asyncio.Event()
    cut = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    following = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    async with asyncio.timeout(DEADLINE_S):
        assert await following == [200, 201]
    assert client.log == ["connect", "send 100", "close", "connect", "send 200"]
    assert client.cancelled == [100]
    assert transport.connected


async def test_cancel_while_connecting_closes_and_passes_the_line_on(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A request cancelled while the connection opens leaves unsent, drops the half-open
    connection and lets the next request connect and go out."""
    client.connect_gate = asyncio.Event()
    cut = asyncio.create_task(transport.read(holding(100), UNIT))
    await settle()
    following = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    assert client.log == ["connect"]
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    client.connect_gate.set()
    async with asyncio.timeout(DEADLINE_S):
        assert await following == [200, 201]
    assert sent(client) == [200]
    assert client.log[:2] == ["connect", "close"]


async def test_swallowed_cancellation_is_raised_after_the_answer(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """When the cancel of a caller meets its answer and the client drops the cancellation
    (Python 3.11's ``wait_for``), the caller is still cancelled rather than handed the answer;
    the answer arrived, so the connection stays open, and the line passes on."""
    client.gates[100] = asyncio.Event()
    client.swallow.add(100)
    cut = asyncio.create_task(transport.read(holding(100), UNIT))
    await client.arrived[100].wait()
    following = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    cut.cancel()
    async with asyncio.timeout(DEADLINE_S):
        with pytest.raises(asyncio.CancelledError):
            await cut
        assert await following == [200, 201]
    assert cut.cancelled()
    assert client.cancelled == [100], "the fake did take the cancel and answer anyway"
    assert client.closes == 0
    assert client.log == ["connect", "send 100", "send 200"]


async def test_swallowed_cancellation_from_a_deadline_is_a_timeout(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A caller's deadline expiring on a request whose client drops the cancellation still
    ends in ``TimeoutError``, not in a late result."""
    client.gates[100] = asyncio.Event()
    client.swallow.add(100)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await transport.read(holding(100), UNIT)
    assert client.cancelled == [100]
    async with asyncio.timeout(DEADLINE_S):
        assert await transport.read(holding(200), UNIT) == [200, 201]


async def test_cancellation_swallowed_before_the_request_does_not_fail_it(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """Only a cancellation that arrives during the request fails it: a task that swallowed a
    cancellation earlier (its ``cancelling()`` count is already up) is still served."""

    async def once_cancelled_caller() -> list[int]:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        assert me.cancelling() == 1
        return await transport.read(holding(200), UNIT)

    async with asyncio.timeout(DEADLINE_S):
        assert await asyncio.create_task(once_cancelled_caller()) == [200, 201]
    assert client.log == ["connect", "send 200"]


async def test_failed_connect_frees_the_line_for_the_next_caller(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A refused connect fails its caller with ``TransportError`` and the next caller in line
    connects afresh and is served."""
    client.connect_gate = asyncio.Event()
    client.connect_results = [False, True]
    refused = asyncio.create_task(transport.read(holding(100), UNIT))
    await settle()
    following = asyncio.create_task(transport.read(holding(200), UNIT))
    await settle()
    client.connect_gate.set()
    async with asyncio.timeout(DEADLINE_S):
        with pytest.raises(TransportError, match="connection failed"):
            await refused
        assert await following == [200, 201]
    assert client.log == ["connect", "connect", "send 200"]


async def test_failed_request_frees_the_line_and_repeated_failures_reconnect(
    client: FakeClient, transport: ModbusTransport
) -> None:
    """A request that fails on the line (``OSError``) becomes ``TransportError`` without
    holding up the next caller; after ``FAILURES_BEFORE_RECONNECT`` failures in a row the
    connection is reopened."""
    failing = list(range(1000, 1000 + FAILURES_BEFORE_RECONNECT))
    for address in failing:
        client.errors[address] = OSError("connection reset by peer")
    client.gates[failing[0]] = asyncio.Event()
    first = asyncio.create_task(transport.read(holding(failing[0]), UNIT))
    await client.arrived[failing[0]].wait()
    others = [asyncio.create_task(transport.read(holding(a), UNIT)) for a in failing[1:]]
    await settle()
    client.gates[failing[0]].set()
    async with asyncio.timeout(DEADLINE_S):
        for task in (first, *others):
            with pytest.raises(TransportError, match="reset by peer"):
                await task
        assert await transport.read(holding(200), UNIT) == [200, 201]
    assert client.closes == 1
    assert client.log[-3:] == ["close", "connect", "send 200"]
