"""The adapter contract and the polling engine shared by poll protocols (Modbus, SunSpec).

A ``PollingAdapter`` polls one device: connect, ``read_once()``, publish, then wait for the next
tick. Every device has its own interval, timeout and capped exponential backoff, so a dead or
slow device never delays another; it runs as its own task (``run``), or, sharing a connection,
is polled by that connection's task (``derim.adapters.line``). Each adapter keeps a
``DeviceStatus`` (online, degraded, offline, last seen, last error) that the API can show, and
tells its ``status_changed`` callback of each change of state.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import ValidationError

from derim.errors import AdapterError, InvalidRequestError, ProtocolError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.models.common import Quality
from derim.models.telemetry import DERTelemetry

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[DERTelemetry]], Awaitable[None]]
"""Hands canonical records to the ingest bus."""


class ConnectionState(StrEnum):
    """How reachable a device is, as the adapter last saw it."""

    CONNECTING = "connecting"
    ONLINE = "online"
    DEGRADED = "degraded"
    """Answering, but the last read was partial or undecodable."""
    OFFLINE = "offline"


@dataclass(slots=True)
class DeviceStatus:
    """What an adapter knows about its device's connection."""

    state: ConnectionState = ConnectionState.CONNECTING
    last_seen: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    polls: int = 0
    late_polls: int = 0


StatusChanged = Callable[[str, ConnectionState, DeviceStatus], None]
"""Told a device's id, its previous state and its status once its state has changed."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial_s * factor**n``, at most ``max_s``."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1
    """Fraction of the delay added at random, so many dead devices do not retry in lockstep."""

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (``failures`` >= 1)."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, failures - 1))
        return base * (1 + random.uniform(0, self.jitter))


def canonical_reading(
    telemetry: type[DERTelemetry], device_id: str, values: Mapping[str, object]
) -> DERTelemetry:
    """One reading stamped now from decoded ``values`` (None entries left out).

    A value the canonical model refuses (SoC 140 %, a negative voltage) means the device sent
    nonsense: ``ProtocolError``, so the poll counts as degraded instead of storing it.
    """
    present = {name: value for name, value in values.items() if value is not None}
    try:
        return telemetry.model_validate(
            {"device_id": device_id, "timestamp": datetime.now(UTC), **present}
        )
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise ProtocolError(f"device reported out-of-range values: {problems}") from exc


def requested_value(
    command: CommandRequest, point: str, unit: str | None, has_choices: bool
) -> float | str:
    """What ``command`` asks control point ``point`` to take: the ``choice`` parameter, else
    the command's own name for a point with choices (``connect``), else its value, which must
    be given in the point's ``unit``; ``InvalidRequestError`` otherwise."""
    value = command.parameters.get("choice")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise InvalidRequestError("parameters.choice", "a choice is a name or a number")
    if value is None:
        value = command.command.value if has_choices else command.value
    if value is None:
        raise InvalidRequestError("value", f"{command.command.value} needs a value")
    if not has_choices and unit and command.unit != unit:
        raise InvalidRequestError("unit", f"{point} takes a value in {unit}, not {command.unit}")
    return value


def read_back_result(
    device_id: str, command: CommandRequest, confirmed: bool, message: str
) -> CommandResult:
    """The record of a command checked by reading the device back: ``acknowledged`` only when
    the device holds what was written, else ``failed``."""
    status = CommandStatus.ACKNOWLEDGED if confirmed else CommandStatus.FAILED
    return CommandResult(
        device_id=device_id,
        request=command,
        status=status,
        message=message,
        history=[(status, datetime.now(UTC))],
    )


class Adapter(abc.ABC):
    """One device (or gateway) speaking one protocol."""

    protocol: ClassVar[str]

    @abc.abstractmethod
    async def run(self, publish: Publish) -> None:
        """Run until cancelled, publishing canonical records; reconnect on failure."""

    @abc.abstractmethod
    def validate(self, command: CommandRequest) -> None:
        """Check a command without sending it; raises ``InvalidRequestError``."""

    @abc.abstractmethod
    async def send(self, command: CommandRequest) -> CommandResult:
        """Carry out a command; raises ``DeviceRejected`` or ``TransportError``."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Undo active controls (return the device to its defaults)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


@dataclass
class PollSettings:
    """Timing of one device's polls (seconds)."""

    interval_s: float = 1.0
    timeout_s: float = 2.0
    """How long the device may take to answer one request."""
    backoff: Backoff = field(default_factory=Backoff)
    deadline_s: float | None = None
    """Bound on a whole poll (connecting, discovery, several requests); 4 x ``timeout_s`` if
    None, so that it cuts off a hung poll rather than a slow request."""

    @property
    def poll_deadline_s(self) -> float:
        """The bound on a whole poll (s)."""
        return self.deadline_s if self.deadline_s is not None else 4 * self.timeout_s


class PollingAdapter(Adapter):
    """Polls one device on its own interval with a per-poll timeout and backoff on failure."""

    def __init__(self, device_id: str, settings: PollSettings | None = None) -> None:
        self.device_id = device_id
        self.settings = settings or PollSettings()
        self.status = DeviceStatus()
        self.status_changed: StatusChanged | None = None
        self._connected = False
        self._next_tick: float | None = None

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise ``TransportError`` when the device cannot be reached."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Drop the connection so the next poll reconnects from scratch."""

    async def aclose(self) -> None:
        """Drop the connection."""
        await self.disconnect()

    @abc.abstractmethod
    async def read_once(self) -> Sequence[DERTelemetry]:
        """Read the device once; raise ``TransportError`` or ``ProtocolError``."""

    line: str | None = None
    """The connection this device shares with others (a gateway, a serial line), if any: the
    manager then polls all of them from one task (see ``derim.adapters.line``)."""

    async def run(self, publish: Publish) -> None:
        """Poll forever: on time when healthy, after a backoff delay when not."""
        loop = asyncio.get_running_loop()
        while True:
            due = await self.poll(publish)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def poll(self, publish: Publish) -> float:
        """Poll the device once and publish what it read; the loop time (s) of the next poll.

        Healthy, that is the next tick of the device's own schedule (a poll that starts late
        moves the schedule on and counts in ``late_polls``); after a failure, the end of the
        backoff delay.
        """
        loop = asyncio.get_running_loop()
        if self._next_tick is None:
            self._next_tick = loop.time()
        self.status.polls += 1
        try:
            async with asyncio.timeout(self.settings.poll_deadline_s):
                if not self._connected:
                    await self.connect()
                    self._connected = True
                records = await self.read_once()
        except (TransportError, TimeoutError, OSError) as exc:
            return await self._fail(ConnectionState.OFFLINE, exc)
        except AdapterError as exc:
            # The device answered, but with something undecodable or a refusal.
            return await self._fail(ConnectionState.DEGRADED, exc)
        self._succeeded(records)
        await publish(records)
        self._next_tick += self.settings.interval_s
        now = loop.time()
        if self._next_tick < now:
            self.status.late_polls += 1
            self._next_tick = now
        return self._next_tick

    def _succeeded(self, records: Sequence[DERTelemetry]) -> None:
        """A poll answered; a reading flagged less than good (a partial read) means degraded."""
        partial = any(record.quality is not Quality.GOOD for record in records)
        state = ConnectionState.DEGRADED if partial else ConnectionState.ONLINE
        previous = self.status.state
        if previous is not state:
            log.info("device %s %s", self.device_id, state.value)
        self.status.state = state
        self.status.last_seen = datetime.now(UTC)
        self.status.last_error = None
        self.status.consecutive_failures = 0
        self._changed(previous)

    async def _fail(self, state: ConnectionState, exc: BaseException) -> float:
        """Record a failed poll, log the change once and drop the connection; the loop time (s)
        at which the backoff delay ends."""
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        previous = self.status.state
        if previous is not state:
            log.warning("device %s %s: %s", self.device_id, state.value, message)
        else:
            log.debug("device %s still %s: %s", self.device_id, state.value, message)
        self.status.state = state
        self.status.last_error = message
        self.status.consecutive_failures += 1
        self._changed(previous)
        self._connected = False
        try:
            await self.disconnect()
        except (TransportError, OSError) as exc_close:
            log.debug("device %s: error while disconnecting: %s", self.device_id, exc_close)
        self._next_tick = asyncio.get_running_loop().time() + self.settings.backoff.delay(
            self.status.consecutive_failures
        )
        return self._next_tick

    def _changed(self, previous: ConnectionState) -> None:
        """Tell ``status_changed`` when the state is no longer ``previous``."""
        if self.status_changed is not None and self.status.state is not previous:
            self.status_changed(self.device_id, previous, self.status)
