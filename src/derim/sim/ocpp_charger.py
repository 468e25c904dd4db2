"""Simulated EV chargers that speak real OCPP-J (1.6 or 2.0.1) to a CSMS, through the
charge-point side of the ``ocpp`` library.

A :class:`SimulatedCharger` connects to ``{url}/{charge_point_id}``, boots, sends heartbeats and
status notifications, runs charging sessions (``plug_in`` / ``unplug``, or random ones with
``auto_sessions``) whose power is the lowest of the EV's maximum, the charger's maximum and the
composite charging-profile limit (:mod:`derim.sim.ocpp_profiles`), reports meter values, and
honours the CSMS's commands. In OCPP 2.0.1 each "connector" is an EVSE with one connector.

The CSMS's commands are answered by a dialect (:mod:`derim.sim.ocpp_dialect`), one per version:
:class:`~derim.sim.ocpp_v16.V16` or :class:`~derim.sim.ocpp_v201.V201`. Its handlers are routed
through an explicit ``route_map`` (not the library's global ``@on`` registry), are plain functions
that never await, and leave any follow-up (StartTransaction after a remote start, the message a
TriggerMessage asks for, ...) to a task spawned once the response went out.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any, Literal

from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from derim.errors import AdapterError, DeviceRejected, TransportError
from derim.sim import ocpp_profiles as prof
from derim.sim.ocpp_dialect import Dialect
from derim.sim.ocpp_state import TX, Connector, FollowUp, Sample, Session
from derim.sim.ocpp_v16 import V16
from derim.sim.ocpp_v201 import V201
from derim.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

ARRIVAL_TICKS = 20
"""Auto sessions: mean meter intervals between an EV leaving and the next one arriving."""
STAY_TICKS = 30
"""Auto sessions: mean meter intervals an EV stays."""
DEFAULT_HEARTBEAT_S = 300.0
"""Heartbeat interval (s) when the CSMS answers BootNotification with interval 0."""
MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "SoC",
    "Power.Offered",
)


class SimulatedCharger:
    """A charge point with ``connectors`` talking OCPP ``version`` to the CSMS at ``url``."""

    def __init__(
        self,
        charge_point_id: str,
        url: str,
        *,
        version: Literal["1.6", "2.0.1"] = "1.6",
        connectors: int = 1,
        max_power_kw: float = 11.0,
        phases: int = 3,
        voltage_v: float = 230.0,
        meter_interval_s: float = 10.0,
        password: str | None = None,
        ssl: SSLContext | None = None,
        vendor: str = "DERIM",
        model: str = "SimCharger",
        firmware: str = "1.0.0",
        reconnect_s: float = 2.0,
        response_timeout_s: float = 10.0,
        auto_sessions: bool = False,
        seed: int = 0,
    ) -> None:
        """``max_power_kw`` per connector (kW); ``voltage_v`` line to neutral (V); intervals in
        s; ``password`` for HTTP Basic auth; ``auto_sessions``: EVs arrive and leave at random
        (``random.Random(seed)``)."""
        self.charge_point_id = charge_point_id
        self.url = f"{url.rstrip('/')}/{charge_point_id}"
        self.version = version
        self.max_power_kw = max_power_kw
        self.phases = phases
        self.voltage_v = voltage_v
        self.meter_interval_s = meter_interval_s
        self.password = password
        self.ssl = ssl
        self.vendor, self.model, self.firmware = vendor, model, firmware
        self.reconnect_s = reconnect_s
        self.response_timeout_s = response_timeout_s
        self.auto_sessions = auto_sessions
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.connected = asyncio.Event()
        self.connectors = {i: Connector(i) for i in range(1, connectors + 1)}
        self.profiles: list[prof.Profile] = []
        self.availability: dict[int, str] = dict.fromkeys(self.connectors, "Operative")
        self.resets: list[str] = []
        self.unlocks: list[int] = []
        self.dialect: Dialect = V16(self) if version == "1.6" else V201(self)
        self._rng = random.Random(seed)
        self._cp: Any = None  # the ocpp ChargePoint of the live connection
        self._ws: ClientConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._call_lock = asyncio.Lock()  # calls go out one by one, in the order made
        self._status_lock = asyncio.Lock()  # a status is sent before the next one is decided
        self._followup: FollowUp | None = None
        self._down_logged = False

    # ---- public API ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, boot and serve; reconnect ``reconnect_s`` after the connection drops or
        fails. Runs until cancelled (and then closes the websocket)."""
        try:
            while True:
                try:
                    await self._session()
                except (OSError, TimeoutError, WebSocketException, AdapterError) as exc:
                    log = logger.debug if self._down_logged else logger.warning
                    log("%s: connection lost or failed: %r", self.charge_point_id, exc)
                    self._down_logged = True
                except Exception:  # a bug must not end the simulator; it is logged in full
                    logger.exception("%s: session failed", self.charge_point_id)
                await asyncio.sleep(self.reconnect_s)
        finally:
            # A task spawned while a cancelled session was winding down ends here at the latest.
            while self._tasks:
                await cancel_and_wait(self._tasks.pop())

    async def plug_in(
        self,
        connector_id: int = 1,
        id_tag: str = "SIMTAG",
        ev_max_kw: float | None = None,
        soc_percent: float = 30.0,
        capacity_kwh: float = 60.0,
    ) -> str | None:
        """An EV (max ``ev_max_kw`` kW, ``capacity_kwh`` kWh at ``soc_percent`` %) arrives and
        its driver presents ``id_tag``: Authorize, then start a transaction. Returns its id, or
        None if the connector is busy or inoperative or the CSMS refused. Raises
        ``TransportError`` when not connected, ``DeviceRejected`` on a CallError."""
        conn = self._connector(connector_id)
        if conn.session is not None or self.availability[conn.id] != "Operative":
            logger.warning("%s: connector %d busy or inoperative", self.charge_point_id, conn.id)
            return None
        if not self.connected.is_set():
            raise TransportError(f"{self.charge_point_id} is not connected")
        conn.session = Session(id_tag, ev_max_kw, soc_percent, capacity_kwh, starting=True)
        try:
            await self._send_status(conn)
            accepted = await self.dialect.authorize(id_tag)
        except BaseException:
            conn.session = None
            raise
        if not accepted:
            logger.info("%s: id tag %s not accepted", self.charge_point_id, id_tag)
            conn.session = None
            await self._send_status(conn)
            return None
        return await self._begin(conn, "Authorized")

    async def unplug(self, connector_id: int = 1) -> None:
        """The EV leaves: its transaction (if any) stops with reason EVDisconnected and the
        connector becomes Available. Wire failures are logged; the EV leaves anyway."""
        try:
            await self._end(self._connector(connector_id), "EVDisconnected", unplug=True)
        except AdapterError as exc:
            logger.warning("%s: unplug not reported: %r", self.charge_point_id, exc)

    def power_kw(self, connector_id: int = 1) -> float:
        """Charging power (kW, >= 0): min(EV max, charger max, composite profile limit); 0
        without a transaction or with a full battery."""
        session = self._connector(connector_id).session
        if session is None or session.tx_id is None or session.soc_percent >= 100:
            return 0.0
        ev_max = math.inf if session.ev_max_kw is None else session.ev_max_kw
        return max(0.0, min(ev_max, self.offered_kw(connector_id)))

    def offered_kw(self, connector_id: int = 1) -> float:
        """Power the charger offers on the connector now (kW): its maximum capped by the
        composite charging-profile limit."""
        limit = prof.composite_limit_kw(
            self.profiles,
            connector_id,
            datetime.now(UTC),
            tx_start=self._connector(connector_id).tx_start,
            phases=self.phases,
            voltage_v=self.voltage_v,
        )
        return self.max_power_kw if limit is None else min(limit, self.max_power_kw)

    def transaction_id(self, connector_id: int = 1) -> str | None:
        """Id of the transaction running on the connector, if any."""
        session = self._connector(connector_id).session
        return None if session is None else session.tx_id

    async def call(self, payload: Any) -> Any:
        """Send an ``ocpp`` call payload and return its result, one call at a time in the order
        they were made. A CallError raises ``DeviceRejected``; a timeout or a lost connection
        ``TransportError``."""
        async with self._call_lock:
            cp = self._cp
            if cp is None:
                raise TransportError(f"{self.charge_point_id} is not connected")
            try:
                return await cp.call(payload, suppress=False)
            except (TimeoutError, WebSocketException) as exc:
                raise TransportError(f"{type(payload).__name__}: {exc!r}") from exc
            except OCPPError as exc:
                raise DeviceRejected(f"{type(payload).__name__}: {exc}") from exc

    # ---- connection --------------------------------------------------------------------------

    async def _session(self) -> None:
        """One connection: boot, serve and heartbeat until it drops."""
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.charge_point_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        async with connect(
            self.url,
            subprotocols=[self.dialect.subprotocol],
            compression=None,
            additional_headers=headers,
            ssl=self.ssl,
            open_timeout=self.response_timeout_s,
            close_timeout=2,
        ) as ws:
            if ws.subprotocol != self.dialect.subprotocol:
                raise TransportError(f"the CSMS does not speak {self.dialect.subprotocol}")
            cp = self.dialect.charge_point(ws)
            routes = self.dialect.routes().items()
            cp.route_map = {action: self._route(action, h) for action, h in routes}
            self._cp, self._ws = cp, ws
            # fresh locks: a call still waiting on the old connection must not hold this one up
            self._call_lock, self._status_lock = asyncio.Lock(), asyncio.Lock()
            name = f"derim-sim-ocpp-{self.charge_point_id}"
            receiver: asyncio.Task[None] = asyncio.create_task(cp.start(), name=f"{name}-recv")
            driver = asyncio.create_task(self._drive(), name=f"{name}-drive")
            try:
                done, _ = await asyncio.wait(
                    {receiver, driver}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()
            finally:
                self.connected.clear()
                self._cp = self._ws = None
                await cancel_and_wait(driver)
                await cancel_and_wait(receiver)
                while self._tasks:
                    await cancel_and_wait(self._tasks.pop())

    async def _drive(self) -> None:
        """Boot until accepted, report every connector, then heartbeat."""
        while True:
            status, interval = await self.dialect.boot()
            if status == "Accepted":
                break
            logger.info("%s: boot %s, retrying", self.charge_point_id, status)
            await asyncio.sleep(interval or self.reconnect_s)
        self.heartbeat_s = float(interval) if interval > 0 else DEFAULT_HEARTBEAT_S
        self.connected.set()
        self._down_logged = False
        logger.info("%s: connected to %s", self.charge_point_id, self.url)
        for conn in self.connectors.values():
            await self._send_status(conn, force=True)
        self._spawn(self._meter_loop, "meter")
        if self.auto_sessions:
            self._spawn(self._auto_loop, "auto")
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.dialect.heartbeat()
            except AdapterError as exc:
                logger.warning("%s: heartbeat failed: %r", self.charge_point_id, exc)

    def _route(self, action: str, handler: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """A route-map entry: ``handler`` gives the answer's fields; a follow-up it set with
        ``_later`` runs once the answer was sent."""
        answer = getattr(self.dialect.version.call_result, action)

        def on(**kwargs: Any) -> Any:
            self._followup = None
            return answer(**handler(**kwargs))

        def after(**_: Any) -> None:
            followup, self._followup = self._followup, None
            if followup is not None:
                self._spawn(followup, action)

        return {"_on_action": on, "_after_action": after, "_skip_schema_validation": False}

    def _later(self, followup: FollowUp) -> None:
        """Run ``followup`` after the response to the call being handled went out."""
        self._followup = followup

    def _spawn(self, work: FollowUp, name: str) -> None:
        """Run ``work`` in a task of this connection, logging what goes wrong."""

        async def guarded() -> None:
            try:
                await work()
            except AdapterError as exc:
                logger.warning("%s: %s failed: %r", self.charge_point_id, name, exc)
            except Exception:  # a bug in a follow-up must not end the session
                logger.exception("%s: %s failed", self.charge_point_id, name)

        task = asyncio.create_task(guarded(), name=f"derim-sim-ocpp-{self.charge_point_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sessions ----------------------------------------------------------------------------

    def _connector(self, connector_id: int) -> Connector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise ValueError(f"{self.charge_point_id} has no connector {connector_id}") from None

    async def _begin(self, conn: Connector, trigger: str) -> str | None:
        """Start a transaction for the session on ``conn`` (``trigger``: 2.0.1 reason): its id,
        or None when the CSMS refused the id tag (the transaction then stops and the EV leaves).
        A remote start's TxProfile applies from its first meter value."""
        session = conn.session
        assert session is not None
        if session.tx_profile is not None:
            self.profiles = prof.install(self.profiles, session.tx_profile)
        try:
            await self._send_status(conn)
            self._advance(conn)
            session.started = datetime.now(UTC)
            accepted = await self.dialect.start(conn, session, trigger)
        except BaseException:
            if session.tx_id is None:
                conn.session = None
                self.profiles, _ = prof.clear(self.profiles, connector_id=conn.id, purpose=TX)
            raise
        finally:
            session.starting = False
        if not accepted:
            await self._end(conn, "DeAuthorized", unplug=True)
            return None
        tx = session.tx_id
        logger.info("%s: transaction %s started on %d", self.charge_point_id, tx, conn.id)
        await self._send_status(conn)
        return tx

    async def _end(self, conn: Connector, reason: str, *, unplug: bool) -> None:
        """Stop the transaction on ``conn`` with ``reason`` (1.6 names); ``unplug``: the EV
        leaves as well."""
        self._advance(conn)
        session = conn.session
        if session is None:
            return
        tx, session.tx_id = session.tx_id, None
        session.finished = not unplug
        if unplug:
            conn.session = None
        self.profiles, _ = prof.clear(self.profiles, connector_id=conn.id, purpose=TX)
        if conn.pending_availability is not None:
            self.availability[conn.id], conn.pending_availability = conn.pending_availability, None
        if tx is not None:
            logger.info("%s: transaction %s ended (%s)", self.charge_point_id, tx, reason)
            await self.dialect.stop(conn, session, tx, reason)
        await self._send_status(conn)

    def _advance(self, conn: Connector) -> None:
        """Integrate the connector's power since the last call into its energy register (Wh)
        and the EV's state of charge (%)."""
        now = asyncio.get_running_loop().time()
        elapsed_s = 0.0 if conn.last_tick is None else now - conn.last_tick
        conn.last_tick = now
        power = self.power_kw(conn.id)
        conn.energy_wh += power * elapsed_s / 3.6
        session = conn.session
        if session is not None and session.capacity_kwh > 0:
            gained = power * elapsed_s / 36 / session.capacity_kwh
            session.soc_percent = min(100.0, session.soc_percent + gained)

    def _advance_all(self) -> None:
        for conn in self.connectors.values():
            self._advance(conn)

    def charging_state(self, conn: Connector) -> str:
        """Charging, SuspendedEVSE (nothing offered) or SuspendedEV (the EV takes nothing)."""
        if self.power_kw(conn.id) > 0:
            return "Charging"
        return "SuspendedEVSE" if self.offered_kw(conn.id) <= 0 else "SuspendedEV"

    async def _send_status(self, conn: Connector, *, force: bool = False) -> None:
        """StatusNotification for ``conn`` if its status changed (or ``force``)."""
        async with self._status_lock:
            status = self.dialect.status_of(conn)
            if force or status != conn.last_status:
                await self.dialect.send_status(conn, status)
                conn.last_status = status

    async def _send_meter(self, conn: Connector, context: str, *, plain: bool = False) -> None:
        self._advance(conn)
        await self.dialect.meter(conn, context, plain=plain)

    def samples(self, conn: Connector) -> list[Sample]:
        """Meter samples of ``conn`` now: energy (Wh), power (W, total and per phase of three),
        current (A) and voltage (V, to neutral) per phase, SoC (%), offered power (W)."""
        power_w = self.power_kw(conn.id) * 1000
        phases = ["L1", "L2", "L3"] if self.phases == 3 else ["L1"]
        out: list[Sample] = [
            ("Energy.Active.Import.Register", round(conn.energy_wh, 1), "Wh", None, "Outlet"),
            ("Power.Active.Import", round(power_w, 1), "W", None, "Outlet"),
        ]
        if len(phases) == 3:
            out += [
                ("Power.Active.Import", round(power_w / 3, 1), "W", p, "Outlet") for p in phases
            ]
        current_a = power_w / (self.phases * self.voltage_v)
        out += [("Current.Import", round(current_a, 2), "A", p, "Outlet") for p in phases]
        out += [("Voltage", round(self.voltage_v, 1), "V", f"{p}-N", "Outlet") for p in phases]
        if conn.session is not None:
            out.append(("SoC", round(conn.session.soc_percent, 1), "Percent", None, "EV"))
        offered_w = self.offered_kw(conn.id) * 1000
        out.append(("Power.Offered", round(offered_w, 1), "W", None, "Outlet"))
        return out

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(self.meter_interval_s)
            for conn in self.connectors.values():
                session = conn.session
                if session is None or session.tx_id is None or session.starting:
                    continue  # no transaction (yet: a 2.0.1 one is named before it started)
                try:
                    await self._send_meter(conn, "Sample.Periodic")
                    await self._send_status(conn)
                except AdapterError as exc:
                    logger.warning("%s: meter values failed: %r", self.charge_point_id, exc)

    async def _auto_loop(self) -> None:
        rng = self._rng
        while True:
            await asyncio.sleep(self.meter_interval_s)
            for conn in self.connectors.values():
                session = conn.session
                try:
                    if session is None and rng.random() < 1 / ARRIVAL_TICKS:
                        await self.plug_in(
                            conn.id,
                            id_tag=f"SIM{rng.randrange(1000):03d}",
                            ev_max_kw=rng.choice([3.7, 7.4, 11.0, 22.0]),
                            soc_percent=rng.uniform(10, 60),
                            capacity_kwh=rng.choice([40.0, 60.0, 77.0, 100.0]),
                        )
                    elif (
                        session is not None
                        and not session.starting
                        and (session.finished or rng.random() < 1 / STAY_TICKS)
                    ):
                        await self.unplug(conn.id)
                except AdapterError as exc:
                    logger.warning("%s: auto session failed: %r", self.charge_point_id, exc)

    # ---- configuration -----------------------------------------------------------------------

    def configuration(self) -> dict[str, tuple[str, bool]]:
        """Configuration keys (OCPP 1.6 names): (value, read-only)."""
        return {
            "HeartbeatInterval": (f"{self.heartbeat_s:g}", False),
            "MeterValueSampleInterval": (f"{self.meter_interval_s:g}", False),
            "NumberOfConnectors": (str(len(self.connectors)), True),
            "AuthorizeRemoteTxRequests": ("false", True),
            "ChargeProfileMaxStackLevel": ("10", True),
            "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", True),
            "MeterValuesSampledData": (",".join(MEASURANDS), True),
        }

    def _change_configuration(self, key: str, value: str) -> str:
        """Accepted, Rejected (read-only, or not a positive number of seconds) or
        NotSupported (unknown key)."""
        known = self.configuration()
        if key not in known:
            return "NotSupported"
        try:
            seconds = float(value)
        except ValueError:
            return "Rejected"
        if known[key][1] or seconds <= 0:
            return "Rejected"
        if key == "HeartbeatInterval":
            self.heartbeat_s = seconds
        else:
            self.meter_interval_s = seconds
        return "Accepted"
