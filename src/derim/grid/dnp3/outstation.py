"""DERIM as a DNP3 outstation toward a utility master (IEEE 1815 over TCP, dnp3py).

Input points (analog and binary) are refreshed from the fleet's latest stored readings every
``refresh_interval_s`` and right after each control; a changed value also becomes a class 1
event. Controls go through ``derim.grid.dnp3.controls``. The library's outstation and its TCP
runner live on a thread with an event loop of their own, because the library calls the
command handler synchronously and the handler must wait for DERIM's loop to learn the outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from dnp3.core.flags import AnalogQuality, BinaryQuality
from dnp3.database import AnalogInputConfig, AnalogOutputConfig, BinaryInputConfig, Database
from dnp3.outstation import Outstation, OutstationConfig, OutstationTcpRunner, UnsolicitedConfig

from derim.errors import DerimError, TransportError
from derim.grid.dnp3.config import Dnp3Config
from derim.grid.dnp3.controls import FleetControls
from derim.grid.dnp3.points import Snapshot, snapshot, watched_ids
from derim.grid.fleet import FleetAccess

log = logging.getLogger(__name__)

LISTEN_CHECK_S = 0.01
"""How often the server thread looks whether the library's runner is listening yet (s)."""


def build_database(config: Dnp3Config) -> Database:
    """The outstation's points: the configured analog and binary inputs (class 1 events on
    change) and the analog outputs, whose status (group 40) tracks the last accepted value."""
    database = Database()
    for analog in config.analog_inputs:
        database.add_analog_input(analog.index, AnalogInputConfig())
    for binary in config.binary_inputs:
        database.add_binary_input(binary.index, BinaryInputConfig())
    for output in config.analog_outputs:
        database.add_analog_output(output.index, AnalogOutputConfig())
    return database


def apply(database: Database, values: Snapshot) -> None:
    """Store one refresh's changed values (each change queues a class 1 event); a point
    without a value keeps its last one, marked communication lost. ``KeyError`` for a point
    the database lacks (``values`` come from the config the database was built from)."""
    for analog in values.analogs:
        point = database.analog_inputs[analog.index]
        quality = AnalogQuality.ONLINE if analog.online else AnalogQuality.COMM_LOST
        value = point.value if analog.value is None else analog.value
        if (value, quality) != (point.value, point.quality):
            database.update_analog_input(analog.index, value, quality)
    for binary in values.binaries:
        flag = BinaryQuality.ONLINE if binary.online else BinaryQuality.COMM_LOST
        state = database.binary_inputs[binary.index]
        if (binary.value, flag) != (state.value, state.quality):
            database.update_binary_input(binary.index, binary.value, flag)


class _WatchedOutstation(Outstation):
    """The library's outstation, counting the TCP connections open to it: its runner calls
    ``new_connection_id`` when a master connects and ``release_connection`` when it leaves
    (both on the server thread; the count is only read elsewhere)."""

    connections = 0

    def new_connection_id(self) -> int:
        self.connections += 1
        return super().new_connection_id()

    def release_connection(self, connection: int) -> None:
        self.connections -= 1
        super().release_connection(connection)


class _ServerThread:
    """The library's TCP runner on an event loop of its own thread."""

    def __init__(self, runner: OutstationTcpRunner) -> None:
        self.runner = runner
        self._loop_runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self.loop = self._loop_runner.get_loop()
        self.listening: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._serving: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._thread = threading.Thread(target=self._main, name="derim-dnp3", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` on the server's loop (where the database lives)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to update
            self.loop.call_soon_threadsafe(function, *args)

    def stop(self) -> None:
        """Ask the runner to stop; ``finished`` completes when it has."""
        self.call(self._cancel)

    def _cancel(self) -> None:
        self._stop_requested = True
        if self._serving is not None:
            self._serving.cancel()

    def _main(self) -> None:
        failure: BaseException | None = None
        try:
            with self._loop_runner:
                self._loop_runner.run(self._serve())
        except BaseException as exc:  # handed to the side awaiting ``listening``
            failure = exc
        if not self.listening.done():
            if not isinstance(failure, Exception):
                failure = ConnectionError("stopped before it listened")
            self.listening.set_exception(failure)
        self.finished.set_result(None)

    async def _serve(self) -> None:
        if self._stop_requested:
            return
        self._serving = asyncio.current_task()
        running = asyncio.create_task(self.runner.run())
        try:
            # The library's runner signals nothing when it starts listening: look (ASYNC110).
            while self.runner.local_address is None and not running.done():  # noqa: ASYNC110
                await asyncio.sleep(LISTEN_CHECK_S)
            if self.runner.local_address is not None:
                self.listening.set_result(self.runner.local_address)
            await running
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


class Dnp3Outstation:
    """The fleet as one DNP3 outstation: construct, ``await run()`` in a task, ``aclose()``."""

    def __init__(self, config: Dnp3Config, fleet: FleetAccess) -> None:
        self.config = config
        self.fleet = fleet
        self.address: tuple[str, int] | None = None
        """Where the outstation listens, once it does."""
        self._database = build_database(config)
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._listening = asyncio.Event()
        self._finished = asyncio.Event()
        self._outstation: _WatchedOutstation | None = None

    @property
    def state(self) -> str:
        """``starting`` until it listens, then ``listening`` or ``master connected`` (a master
        holds a TCP connection to it); ``stopped`` before ``run()`` and after it ended."""
        if not self._running or self._finished.is_set():
            return "stopped"
        if self.address is None or self._outstation is None:
            return "starting"
        return "master connected" if self._outstation.connections > 0 else "listening"

    @property
    def port(self) -> int:
        """The TCP port the outstation listens on (``ValueError`` before it does)."""
        if self.address is None:
            raise ValueError("the DNP3 outstation is not listening")
        return self.address[1]

    async def started(self) -> None:
        """Wait until the outstation listens (or has stopped trying)."""
        await self._listening.wait()

    async def run(self) -> None:
        """Listen, keep the points fresh and carry out controls until ``aclose()`` or
        cancellation. Raises ``TransportError`` when the address cannot be listened on."""
        self._running = True
        try:
            controls = FleetControls(
                self.config, self.fleet, asyncio.get_running_loop(), self._wake.set
            )
            settings = OutstationConfig(
                address=self.config.outstation_address,
                master_address=self.config.master_address,
                time_sync_required=False,
                unsolicited=UnsolicitedConfig(enabled=False),
            )
            outstation = _WatchedOutstation(
                database=self._database, config=settings, handler=controls
            )
            self._outstation = outstation
            apply(self._database, await self._read())
            server = _ServerThread(
                OutstationTcpRunner(outstation, self.config.host, self.config.port)
            )
            server.start()
            try:
                await self._listen(server)
                await self._refresh(server)
            finally:
                server.stop()
                await asyncio.shield(asyncio.wrap_future(server.finished))
                log.info("dnp3 outstation stopped")
        finally:
            self.address = None
            self._listening.set()
            self._finished.set()

    async def aclose(self) -> None:
        """Stop listening and wait until the outstation has stopped (if it runs)."""
        self._stopping = True
        self._wake.set()
        if self._running:
            await self._finished.wait()

    async def _listen(self, server: _ServerThread) -> None:
        where = f"{self.config.host}:{self.config.port}"
        try:
            self.address = await asyncio.wrap_future(server.listening)
        except Exception as exc:
            raise TransportError(f"dnp3 outstation cannot listen on {where}: {exc}") from exc
        self._listening.set()
        log.info("dnp3 outstation %d listening on %s:%d", self.config.outstation_address,
                 *self.address)  # fmt: skip

    async def _refresh(self, server: _ServerThread) -> None:
        """Refresh the points every interval, or at once after a control, until stopped.
        Raises ``TransportError`` if the library's server ends by itself."""
        while not self._stopping:
            if server.finished.done():
                raise TransportError("dnp3 outstation stopped serving unexpectedly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.refresh_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self._stopping:
                server.call(apply, self._database, await self._read())

    async def _read(self) -> Snapshot:
        """The input points' values from the latest readings; all communication lost when
        storage cannot be read."""
        devices = self.fleet.devices()
        ids = watched_ids(self.config, devices)
        try:
            latest = await self.fleet.latest(ids) if ids else {}
        except DerimError as exc:
            log.warning("dnp3 points not refreshed from storage: %s", exc)
            latest = {}
        return snapshot(self.config, devices, latest, datetime.now(UTC))
