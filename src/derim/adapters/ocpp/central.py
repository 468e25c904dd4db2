"""The central system (CSMS): one long-lived WebSocket server that EV chargers connect to.

Chargers connect to ``ws://<host>:<port>/ocpp/{charge_point_id}`` offering ``ocpp2.0.1`` and/or
``ocpp1.6`` (2.0.1 is preferred when both are offered). The handshake refuses a wrong path
(404), a missing subprotocol (400), bad credentials under security profiles 1 and 2 (401) and,
unless unknown chargers are registered on connect, an unknown charge point (403). A charger
that reconnects replaces its old connection. Commands to a charger that is not connected fail
at once with ``TransportError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import re
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import ocpp.messages
from ocpp.exceptions import OCPPError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from derim.adapters.base import ConnectionState, DeviceStatus, Publish, StatusChanged
from derim.adapters.ocpp.commands import build_call
from derim.adapters.ocpp.meter import MeterReadings
from derim.adapters.ocpp.views import (
    SECURITY_EVENTS_KEPT,
    ChargerView,
    ConnectorView,
    SecurityEvent,
    Version,
)
from derim.config import Settings
from derim.errors import ConfigError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.models.common import ID_PATTERN, ConnectorStatus, DeviceType
from derim.models.device import DERDevice, OcppConnection
from derim.models.session import ChargingSession
from derim.models.telemetry import EVChargerTelemetry
from derim.storage.registry import DeviceRegistry
from derim.storage.rejects import Reject, RejectStore
from derim.storage.sessions import SessionStore
from derim.tasks import cancel_and_wait

log = logging.getLogger(__name__)
WIRE_LOG = logging.getLogger("derim.adapters.ocpp.wire")
"""The library's per-frame traces (silenced above DEBUG by ``derim.logging``)."""


class LibraryLog(logging.LoggerAdapter[logging.Logger]):
    """The logger handed to the ``ocpp`` library: it reports a handler's error as one warning
    line (the error's text) instead of a full traceback. A charger that keeps sending what DERIM
    refuses (or a store that is down) must not cost a rendered traceback per message."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        """A warning naming the error being handled, without its traceback."""
        error = sys.exc_info()[1]
        kwargs.pop("exc_info", None)
        self.warning(f"{msg}: {type(error).__name__}: {error}", *args, **kwargs)


LIBRARY_LOG = LibraryLog(WIRE_LOG)

SUBPROTOCOLS: dict[str, Version] = {"ocpp2.0.1": "2.0.1", "ocpp1.6": "1.6"}
PATH = re.compile(r"/ocpp/([^/?]{1,48})")
MAX_FRAME_BYTES = 1024 * 1024
ACCEPTED_ANSWERS = frozenset({"Accepted", "Scheduled", "Unlocked"})
SessionsChanged = Callable[[str], None]
"""Told the id of a device whose running sessions changed (the site split listens)."""


@dataclass
class ChargerLink:
    """One live charger connection."""

    device_id: str
    charge_point_id: str
    version: Version
    websocket: ServerConnection
    point: Any = None
    """The library's ``ChargePoint`` (``derim.adapters.ocpp.points``) serving the connection."""


@dataclass
class CentralCounters:
    """Totals since start, for ``/health``."""

    connections: int = 0
    messages: int = 0
    call_errors: int = 0
    malformed: int = 0
    refused_handshakes: int = 0
    dropped_fields: int = 0


@dataclass
class _Charger:
    status: DeviceStatus = field(default_factory=DeviceStatus)
    version: Version | None = None
    connectors: dict[int, ConnectorView] = field(default_factory=dict)
    firmware_status: str | None = None
    security_events: deque[SecurityEvent] = field(
        default_factory=lambda: deque(maxlen=SECURITY_EVENTS_KEPT)
    )


class CentralSystem:
    """Accepts charger connections and turns their messages into devices, records, sessions."""

    def __init__(
        self,
        settings: Settings,
        registry: DeviceRegistry,
        sessions: SessionStore,
        rejects: RejectStore,
        ingest: Publish,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.sessions = sessions
        self.rejects = rejects
        self.ingest = ingest
        self.counters = CentralCounters()
        self.sessions_changed: SessionsChanged | None = None
        self.status_changed: StatusChanged | None = None
        """Told of each charger connecting or losing its connection."""
        self._links: dict[str, ChargerLink] = {}
        self._chargers: dict[str, _Charger] = {}
        self._server: Server | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port the server listens on (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the central system is not started")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def connected(self) -> int:
        """Chargers connected now."""
        return len(self._links)

    async def start(self) -> None:
        """Listen for chargers; ``ConfigError`` when the settings cannot work."""
        from derim.adapters.ocpp import points  # handlers import this module

        self._points = points
        # Validate schemas inline: the library's default hands each one to a thread, which
        # costs more than the check itself and lets concurrent CALLs overtake each other.
        ocpp.messages.ASYNC_VALIDATION = False
        ping = self.settings.ocpp_ping_interval_s or None
        try:
            self._server = await serve(
                self._serve,
                self.settings.host,
                self.settings.ocpp_port,
                subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
                process_request=self._handshake,
                compression=None,
                ping_interval=ping,
                ping_timeout=ping,
                max_size=MAX_FRAME_BYTES,
                ssl=self._tls(),
            )
        except OSError as exc:
            raise ConfigError(
                f"ocpp_port: cannot listen on {self.settings.host}:{self.settings.ocpp_port}: {exc}"
            ) from exc
        log.info("OCPP central system listening on port %d", self.port)

    def _tls(self) -> ssl.SSLContext | None:
        if self.settings.ocpp_security_profile < 2:
            return None
        cert, key = self.settings.ocpp_tls_cert, self.settings.ocpp_tls_key
        if cert is None or key is None:
            raise ConfigError("ocpp_security_profile 2 needs ocpp_tls_cert and ocpp_tls_key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ocpp_tls_cert/ocpp_tls_key: {exc}") from exc
        return context

    async def aclose(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._closing):
            await cancel_and_wait(task)

    # --- the handshake and the connection ---------------------------------------------------

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a connection before the upgrade when its path, protocol or credentials fail."""
        refusal = self._refusal(request)
        if refusal is None:
            return None
        status, text = refusal
        self.counters.refused_handshakes += 1
        log.warning("refused OCPP connection to %s: %s", request.path, text)
        response = connection.respond(status, text + "\n")
        if status == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="DERIM OCPP"'
        return response

    def _refusal(self, request: Request) -> tuple[HTTPStatus, str] | None:
        match = PATH.fullmatch(request.path)
        if match is None:
            return HTTPStatus.NOT_FOUND, "connect to /ocpp/{charge_point_id}"
        charge_point_id = unquote(match.group(1))
        offered = {
            p.strip()
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in header.split(",")
        }
        if not offered & SUBPROTOCOLS.keys():
            return HTTPStatus.BAD_REQUEST, "offer the subprotocol ocpp2.0.1 or ocpp1.6"
        if self.settings.ocpp_security_profile >= 1 and not self._authentic(
            charge_point_id, request.headers.get("Authorization")
        ):
            return HTTPStatus.UNAUTHORIZED, f"bad or missing credentials for {charge_point_id}"
        if self.registry.find_charger(charge_point_id) is None:
            if not self.settings.ocpp_register_unknown:
                return HTTPStatus.FORBIDDEN, f"unknown charge point {charge_point_id!r}"
            if re.fullmatch(ID_PATTERN, charge_point_id) is None:
                return HTTPStatus.BAD_REQUEST, f"{charge_point_id!r} cannot be a device id"
        return None

    def _authentic(self, charge_point_id: str, header: str | None) -> bool:
        """HTTP Basic: the user is the charge point id, the password that charger's own."""
        expected = self.settings.ocpp_passwords.get(charge_point_id)
        if expected is None or header is None or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), charge_point_id.encode()) & hmac.compare_digest(
            password.encode(), expected.get_secret_value().encode()
        )

    async def _serve(self, websocket: ServerConnection) -> None:
        """Serve one charger until it disconnects."""
        match = PATH.fullmatch(websocket.request.path if websocket.request else "")
        version = SUBPROTOCOLS.get(websocket.subprotocol or "")
        if match is None or version is None:
            await websocket.close(1002, "no OCPP subprotocol agreed")
            return
        charge_point_id = unquote(match.group(1))
        device = await self._device_for(charge_point_id)
        link = ChargerLink(device.id, charge_point_id, version, websocket)
        link.point = self._points.charge_point(self, link)
        self._attach(link)
        try:
            await link.point.start()
        except ConnectionClosed as exc:
            log.info("charger %s disconnected: %s", charge_point_id, exc)
        finally:
            self._detach(link)

    async def _device_for(self, charge_point_id: str) -> DERDevice:
        """The registered charger, registered now if it is new."""
        device = self.registry.find_charger(charge_point_id)
        if device is not None:
            return device
        device = DERDevice(
            id=charge_point_id,
            device_type=DeviceType.EV_CHARGER,
            connection=OcppConnection(protocol="ocpp", charge_point_id=charge_point_id),
        )
        log.info("registering charger %s", charge_point_id)
        return await self.registry.upsert(device)

    def _attach(self, link: ChargerLink) -> None:
        old = self._links.get(link.device_id)
        self._links[link.device_id] = link
        self.counters.connections += 1
        charger = self._chargers.setdefault(link.device_id, _Charger())
        charger.version = link.version
        previous = charger.status.state
        charger.status.state = ConnectionState.ONLINE
        charger.status.last_seen = datetime.now(UTC)
        charger.status.last_error = None
        self._changed(link.device_id, previous)
        if old is not None:
            log.warning("charger %s reconnected; closing its old connection", link.charge_point_id)
            task = asyncio.create_task(old.websocket.close(1000, "replaced by a new connection"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            log.info("charger %s connected (OCPP %s)", link.charge_point_id, link.version)

    def _detach(self, link: ChargerLink) -> None:
        if self._links.get(link.device_id) is not link:
            return
        del self._links[link.device_id]
        status = self._chargers[link.device_id].status
        previous = status.state
        status.state = ConnectionState.OFFLINE
        status.last_error = "disconnected"
        self._changed(link.device_id, previous)

    def _changed(self, device_id: str, previous: ConnectionState) -> None:
        """Tell ``status_changed`` when the charger's state is no longer ``previous``."""
        status = self._chargers[device_id].status
        if self.status_changed is not None and status.state is not previous:
            self.status_changed(device_id, previous, status)

    # --- what the handlers report -------------------------------------------------------------

    def seen(self, link: ChargerLink) -> None:
        """A message arrived from ``link``."""
        self.counters.messages += 1
        status = self._chargers[link.device_id].status
        status.last_seen = datetime.now(UTC)
        status.polls += 1

    async def booted(
        self,
        link: ChargerLink,
        *,
        vendor: str,
        model: str,
        serial_number: str | None,
        firmware_version: str | None,
    ) -> None:
        """A BootNotification: keep the charger's vendor, model and firmware in the registry."""
        device = self.registry.get(link.device_id)
        update = {
            "manufacturer": vendor,
            "model": model,
            "serial_number": serial_number or device.serial_number,
            "firmware_version": firmware_version or device.firmware_version,
        }
        if any(getattr(device, name) != value for name, value in update.items()):
            await self.registry.upsert(device.model_copy(update=update))

    async def connector_status(
        self,
        link: ChargerLink,
        connector_id: int,
        status: ConnectorStatus,
        at: datetime,
        error_code: str | None = None,
    ) -> None:
        """A StatusNotification: remember it and store it as a reading."""
        view = ConnectorView(
            connector_id=connector_id, status=status, error_code=error_code, updated_at=at
        )
        self._chargers[link.device_id].connectors[connector_id] = view
        record = EVChargerTelemetry(
            device_id=link.device_id,
            timestamp=at,
            connector_id=connector_id,
            connector_status=status,
        )
        await self._store([record])

    async def readings(self, link: ChargerLink, readings: MeterReadings, raw: object) -> None:
        """Meter values: note each session's register, store the records, dead-letter the rest."""
        records = [self._in_session(link, record) for record in readings.records]
        if readings.problems:
            payload = json.dumps(raw, default=str).encode()
            await self.rejects.add(
                [Reject("ocpp", link.charge_point_id, p, payload) for p in readings.problems]
            )
            log.warning(
                "charger %s: %d sampled values not stored: %s",
                link.charge_point_id,
                len(readings.problems),
                "; ".join(readings.problems[:3]),
            )
        await self._store(records)

    def _in_session(self, link: ChargerLink, record: EVChargerTelemetry) -> EVChargerTelemetry:
        """The record with its session's energy, when it belongs to a running session."""
        session = None
        if record.transaction_id is not None:
            session = self.sessions.find_active(link.device_id, record.transaction_id)
        elif record.connector_id:
            session = self.sessions.on_connector(link.device_id, record.connector_id)
        if session is None:
            return record
        if record.energy_import_kwh is not None:
            session = self.sessions.update_meter(session, record.energy_import_kwh)
        return record.model_copy(
            update={
                "transaction_id": session.transaction_id,
                "session_energy_kwh": session.energy_kwh,
            }
        )

    async def session_started(
        self,
        link: ChargerLink,
        connector_id: int,
        at: datetime,
        *,
        id_tag: str | None,
        meter_kwh: float | None,
        transaction_id: str | None = None,
    ) -> ChargingSession:
        """A transaction began (numbered by DERIM when the charger gives no id)."""
        session = await self.sessions.start(
            link.device_id,
            connector_id,
            at,
            id_tag=id_tag,
            meter_start_kwh=meter_kwh,
            transaction_id=transaction_id,
        )
        log.info("charger %s: session %s started", link.charge_point_id, session.transaction_id)
        return session

    async def session_stopped(
        self,
        link: ChargerLink,
        transaction_id: str,
        at: datetime,
        *,
        meter_kwh: float | None,
        reason: str | None,
    ) -> ChargingSession | None:
        """A transaction ended; None if DERIM knew no such running transaction."""
        session = await self.sessions.stop(
            link.device_id, transaction_id, at, meter_stop_kwh=meter_kwh, reason=reason
        )
        if session is None:
            log.warning(
                "charger %s stopped unknown transaction %s", link.charge_point_id, transaction_id
            )
        else:
            log.info("charger %s: session %s ended", link.charge_point_id, transaction_id)
        return session

    def firmware_status(self, link: ChargerLink, status: str) -> None:
        """A FirmwareStatusNotification."""
        log.info("charger %s firmware: %s", link.charge_point_id, status)
        self._chargers[link.device_id].firmware_status = status

    def security_event(
        self, link: ChargerLink, kind: str, at: datetime, tech_info: str | None
    ) -> None:
        """A SecurityEventNotification: logged as a warning and kept with the charger."""
        log.warning("charger %s security event %s: %s", link.charge_point_id, kind, tech_info)
        event = SecurityEvent(type=kind, timestamp=at, tech_info=tech_info)
        self._chargers[link.device_id].security_events.append(event)

    def authorized(self, id_tag: str) -> bool:
        """Whether an id tag may charge (every tag unless an allow-list is configured)."""
        allowed = self.settings.ocpp_allowed_id_tags
        return allowed is None or id_tag in allowed

    def sessions_may_have_changed(self, link: ChargerLink) -> None:
        """Tell the listener (the site split) after a transaction message was answered, so that
        the charger knows its transaction id before it hears of the session's share."""
        if self.sessions_changed is not None:
            self.sessions_changed(link.device_id)

    async def _store(self, records: Sequence[EVChargerTelemetry]) -> None:
        """Hand records to storage and wait until they are durable (or spooled)."""
        if records:
            await self.ingest(records)

    # --- status and commands ------------------------------------------------------------------

    def status(self, device_id: str) -> DeviceStatus | None:
        """Connection state of a charger that has connected since start."""
        charger = self._chargers.get(device_id)
        return None if charger is None else charger.status

    def view(self, device_id: str) -> ChargerView:
        """Version, connectors (by number), firmware status and security events of a charger."""
        charger = self._chargers.get(device_id)
        if charger is None:
            return ChargerView()
        return ChargerView(
            ocpp_version=charger.version,
            connected=device_id in self._links,
            connectors=[charger.connectors[k] for k in sorted(charger.connectors)],
            firmware_status=charger.firmware_status,
            security_events=list(charger.security_events),
        )

    async def disconnect(self, device_id: str, reason: str) -> None:
        """Close a charger's connection (when its device is removed, say)."""
        link = self._links.get(device_id)
        if link is not None:
            await link.websocket.close(1000, reason)

    def link(self, device_id: str) -> ChargerLink:
        """The live connection of a charger; ``TransportError`` when it is not connected."""
        link = self._links.get(device_id)
        if link is None:
            raise TransportError(f"charger {device_id!r} is not connected")
        return link

    def version(self, device: DERDevice) -> Version:
        """The OCPP version of a connected charger (1.6 for one not connected)."""
        link = self._links.get(device.id)
        return link.version if link is not None else "1.6"

    def validate(self, device: DERDevice, command: CommandRequest) -> None:
        """Check a command for a charger without sending it; ``InvalidRequestError``."""
        build_call(self.version(device), command, self._session_on(device.id))

    async def send(self, device: DERDevice, command: CommandRequest) -> CommandResult:
        """Send a command and report the charger's own answer (or its silence)."""
        link = self.link(device.id)
        payload = build_call(link.version, command, self._session_on(device.id))
        result = CommandResult(device_id=device.id, request=command)
        result.history.append((CommandStatus.SENT, datetime.now(UTC)))
        started = time.monotonic()
        try:
            answer = await self.call(link, payload)
        except TimeoutError:
            result.status = CommandStatus.TIMED_OUT
            result.message = f"no answer within {self.settings.ocpp_call_timeout_s:g} s"
        except OCPPError as exc:
            result.status = CommandStatus.REJECTED
            result.message = f"CallError {exc.code}: {exc.description}"
        else:
            result.device_response = answer
            status = str(answer.get("status", ""))
            accepted = status in ACCEPTED_ANSWERS
            result.status = CommandStatus.ACKNOWLEDGED if accepted else CommandStatus.REJECTED
            result.message = f"charger answered {status} in {time.monotonic() - started:.2f} s"
        result.history.append((result.status, datetime.now(UTC)))
        return result

    async def call(self, link: ChargerLink, payload: object) -> dict[str, Any]:
        """Send one CALL and return the answer as plain JSON data.

        Raises ``TimeoutError`` (no answer in time), ``OCPPError`` (a CallError) or
        ``TransportError`` (the connection dropped).
        """
        try:
            answer = await link.point.call(payload, suppress=False)
        except ConnectionClosed as exc:
            raise TransportError(f"charger {link.charge_point_id} disconnected: {exc}") from exc
        plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(answer), default=float))
        return plain

    def _session_on(self, device_id: str) -> Callable[[int], ChargingSession | None]:
        return lambda connector: self.sessions.on_connector(device_id, connector)
