"""A DNP3 master from an independent implementation, opendnp3 (C++, through the ``yadnp3``
bindings), driven from asyncio: class scans into point tables, and controls whose per-point
status the test reads. opendnp3 calls back on its own threads; results cross to the test's
event loop with ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import opendnp3

ONLINE = 0x01
COMM_LOST = 0x04
"""Quality flag bits of analog and binary inputs (IEEE 1815 Tables 4-7 and 4-8)."""


@dataclass
class Points:
    """What one scan returned: value and flag octet of each point, by index."""

    analogs: dict[int, tuple[float, int]] = field(default_factory=dict)
    binaries: dict[int, tuple[bool, int]] = field(default_factory=dict)
    analog_outputs: dict[int, float] = field(default_factory=dict)


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)


class _ScanHandler(opendnp3.ISOEHandler):  # type: ignore[misc]
    """Collects one scan's measurements; resolves ``done`` at the final fragment."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[Points]) -> None:
        super().__init__()
        self.loop = loop
        self.done = done
        self.points = Points()

    def BeginFragment(self, info: Any) -> None:  # noqa: N802 - opendnp3's callback name
        pass

    def EndFragment(self, info: Any) -> None:  # noqa: N802 - opendnp3's callback name
        if info.fin:
            self.loop.call_soon_threadsafe(_resolve, self.done, self.points)

    def Process(self, info: Any, values: list[Any]) -> None:  # noqa: N802 - opendnp3's name
        for item in values:
            value = item.value
            if isinstance(value, opendnp3.Analog):
                self.points.analogs[item.index] = (value.value, value.flags.value)
            elif isinstance(value, opendnp3.Binary):
                self.points.binaries[item.index] = (value.value, value.flags.value)
            elif isinstance(value, opendnp3.AnalogOutputStatus):
                self.points.analog_outputs[item.index] = value.value


class _Application(opendnp3.IMasterApplication):  # type: ignore[misc]
    """Tells the master the time; everything else is the library's default."""

    def Now(self) -> Any:  # noqa: N802 - opendnp3's callback name
        return opendnp3.UTCTimestamp(int(time.time() * 1000))


class Master:
    """opendnp3's master on a TCP client channel to ``127.0.0.1:port``; an async context."""

    def __init__(self, port: int, *, address: int = 1, outstation: int = 1024) -> None:
        self.port = port
        self.address = address
        self.outstation = outstation
        self._manager: Any = None
        self._master: Any = None
        self._handlers: list[Any] = []

    async def __aenter__(self) -> Master:
        self._manager = opendnp3.DNP3Manager(1)
        channel = self._manager.AddTCPClient(
            "derim-test-master",
            opendnp3.levels.NOTHING,
            opendnp3.ChannelRetry.Default(),
            [opendnp3.IPEndpoint("127.0.0.1", self.port)],
            "0.0.0.0",
            None,
        )
        config = opendnp3.MasterStackConfig()
        config.link.LocalAddr = self.address
        config.link.RemoteAddr = self.outstation
        config.master.responseTimeout = opendnp3.TimeDuration.Seconds(15)
        startup = self._scan_handler()
        self._master = channel.AddMaster("master", startup, _Application(), config)
        self._master.Enable()
        await startup.done
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._manager.Shutdown)

    def _scan_handler(self) -> _ScanHandler:
        loop = asyncio.get_running_loop()
        handler = _ScanHandler(loop, loop.create_future())
        self._handlers.append(handler)
        return handler

    async def scan(self) -> Points:
        """An integrity scan (classes 1, 2, 3 and 0): every point's current value."""
        handler = self._scan_handler()
        self._master.ScanClasses(opendnp3.ClassField.AllClasses(), handler)
        async with asyncio.timeout(20):
            return await handler.done

    async def operate(self, command: Any, index: int, *, select: bool = False) -> str:
        """DIRECT OPERATE (or SELECT then OPERATE) one command; the point's status name as
        the outstation answered it, or the task's failure when there was no answer."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def finished(result: Any) -> None:
            loop.call_soon_threadsafe(_resolve, done, result)

        run = self._master.SelectAndOperate if select else self._master.DirectOperate
        run(command, index, finished)
        async with asyncio.timeout(20):
            result = await done
        if result.summary != opendnp3.TaskCompletion.SUCCESS:
            return str(result.summary.name)
        (point,) = result.to_list()
        return str(point.status.name)


def setpoint(value: float) -> Any:
    """A group 41 variation 1 (32-bit integer) analog output command."""
    return opendnp3.AnalogOutputInt32(round(value))


def crob(operation: str) -> Any:
    """A CROB with op type ``operation`` (LATCH_ON, LATCH_OFF, PULSE_ON, ...)."""
    return opendnp3.ControlRelayOutputBlock(getattr(opendnp3.OperationType, operation))
