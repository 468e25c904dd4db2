"""paho-mqtt's network loop in its own thread, handing messages to asyncio in batches.

paho does the protocol (MQTT 3.1.1 and 5, TLS, persistent sessions, reconnect with backoff). Its
thread appends each message to an inbox and wakes the event loop once per batch, not once per
message. QoS 1 messages are acknowledged by hand (``ack``), after the caller has stored them, so
a crash loses nothing the broker delivered: the broker sends them again when the session resumes.

``_BufferedClient`` makes paho read its socket in large chunks (paho alone makes a ``select`` and
three to four ``recv`` calls per message), and hands PUBLISH packets without MQTT 5 properties
straight to the inbox, decoded by paho's cheaper MQTT 3.1.1 decoder. Both rely on paho 2.2's
internals (``_create_socket``, ``_handle_publish``, ``_handle_on_message``, ``_packet``), so the
dependency is pinned to that minor version.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from derim.config import Settings
from derim.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
"""paho's reconnect backoff: doubling from 1 s, at most 30 s."""
MAX_BATCH = 5_000
"""Messages handed to the event loop at once, so one batch never blocks it for long."""
RECEIVE_CHUNK = 262_144
"""Bytes read from the socket at once (paho itself reads every packet in three reads or more)."""
READ_BURST = 1_000
"""Rounds of packet reading paho's thread makes back to back while read bytes remain buffered,
before it waits on the socket again (a round reads the socket once more to finish a packet split
across two reads)."""
MAX_INBOX = 50_000
"""Messages waiting for the event loop; past this paho's thread stops reading from the socket
until the loop catches up (TCP pushes back on the broker), so QoS 0 floods cannot exhaust memory."""


@dataclass(slots=True)
class Message:
    """One message as received; ``received_at`` is Unix time (s). Not frozen: a frozen
    dataclass costs paho's thread twice as much to build, once per message."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    received_at: float
    correlation: bytes | None = None
    """MQTT 5 correlation data, set on command responses."""


class MqttClient:
    """One connection to the broker, subscribed to ``filters``."""

    def __init__(self, settings: Settings, filters: Sequence[str]) -> None:
        if settings.mqtt_url is None:
            raise ConfigError("mqtt_url is not set")
        url = urlsplit(settings.mqtt_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.qos = settings.mqtt_qos
        self.filters = list(filters)
        self.connected = False
        self.subscribed = False
        """Whether the broker has confirmed the subscriptions of the current connection."""
        self.last_error: str | None = None
        self.connection_changed: Callable[[bool], None] | None = None
        """Told, on the event loop, each time the broker connection comes up or goes down."""
        self._settings = settings
        self._v5 = settings.mqtt_protocol == "5"
        self._client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            clean_session=None if self._v5 else False,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            manual_ack=True,
        )
        if url.scheme == "mqtts":
            self._client.tls_set(
                ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
                certfile=str(settings.mqtt_tls_cert) if settings.mqtt_tls_cert else None,
                keyfile=str(settings.mqtt_tls_key) if settings.mqtt_tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if settings.mqtt_username is not None:
            password = settings.mqtt_password
            self._client.username_pw_set(
                settings.mqtt_username, password.get_secret_value() if password else None
            )
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.max_inflight_messages_set(settings.mqtt_receive_maximum)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.plain_message = self._receive
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._lock = threading.RLock()
        self._drained = threading.Condition(self._lock)
        self._inbox: list[Message] = []
        self._woken = False
        self._stopping = False
        self._ready = asyncio.Event()
        self._published: dict[int, asyncio.Future[None]] = {}
        """Futures of ``publish`` calls waiting for the broker, by packet id (event loop only)."""
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start connecting (and reconnecting) in paho's thread; returns at once."""
        self._loop = asyncio.get_running_loop()
        properties = None
        if self._v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
            properties.ReceiveMaximum = self._settings.mqtt_receive_maximum
        try:
            self._client.connect_async(
                self.host,
                self.port,
                keepalive=30,
                clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise TransportError(f"mqtt {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()

    async def stop(self) -> None:
        """Disconnect and stop paho's thread (the broker keeps the session)."""
        with self._lock:
            self._stopping = True
            self._drained.notify()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self.connected = False

    async def messages(self) -> list[Message]:
        """The messages received since the last call, waiting for at least one."""
        while True:
            with self._lock:
                batch = self._inbox[:MAX_BATCH]
                del self._inbox[:MAX_BATCH]
                self._drained.notify()
                if batch:
                    if self._inbox:
                        self._ready.set()
                    return batch
                self._woken = False
                self._ready.clear()
            await self._ready.wait()

    def ack(self, messages: Iterable[Message]) -> None:
        """Acknowledge QoS 1 messages to the broker, in the order received."""
        for message in messages:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Publish and wait until the broker has it (PUBACK at QoS 1); ``TransportError`` if
        the client is not connected."""
        properties = None
        if self._v5 and response_topic is not None:
            properties = _properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        assert self._loop is not None  # start() ran
        info = self._client.publish(topic, payload, qos=qos, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"mqtt publish to {topic}: {paho.error_string(info.rc)}")
        done: asyncio.Future[None] = self._loop.create_future()
        self._published[info.mid] = done  # before _published_mid can run: both on the loop
        await done

    def _wake(self) -> None:
        self._ready.set()

    def _announce(self, connected: bool) -> None:
        """Hand a connection change to ``connection_changed`` on the event loop (paho calls its
        callbacks from its own thread)."""
        if self.connection_changed is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.connection_changed, connected)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"connection refused: {reason}"
            log.warning("mqtt %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.connected = True
        self.last_error = None
        self._announce(True)
        log.info("mqtt connected to %s:%d (session present: %s)", self.host, self.port,
                 flags.session_present)  # fmt: skip
        if self.filters:
            client.subscribe([(topic, self.qos) for topic in self.filters])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            self.last_error = f"subscription refused: {refused[0]}"
            log.error("mqtt %s:%d refused a subscription: %s", self.host, self.port, refused[0])
        self.subscribed = not refused

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self.connected
        self.connected = self.subscribed = False
        if was_connected:
            self._announce(False)
        refused = (self.last_error or "").startswith("connection refused")
        if reason.is_failure and not refused:  # a refusal says more than the disconnect after it
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt %s:%d disconnected: %s", self.host, self.port, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        correlation = None
        if self._v5 and message.properties is not None:
            correlation = getattr(message.properties, "CorrelationData", None)
        self._receive(
            Message(
                topic=message._topic.decode(errors="replace"),  # .topic raises on bad UTF-8
                payload=bytes(message.payload),
                qos=message.qos,
                mid=message.mid,
                received_at=time.time(),
                correlation=correlation,
            )
        )

    def _receive(self, item: Message) -> None:
        """Put ``item`` in the inbox (waiting while it is full) and wake the event loop."""
        with self._lock:
            while len(self._inbox) >= MAX_INBOX and not self._stopping:
                self._drained.wait(timeout=1.0)
            self._inbox.append(item)
            if self._woken:
                return
            self._woken = True
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._wake)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        """Hand ``mid`` to the event loop. paho calls this holding its outgoing-message lock,
        which ``publish`` takes too, so it takes no lock of this client's."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._published_mid, mid)

    def _published_mid(self, mid: int) -> None:
        """Settle the ``publish`` waiting for ``mid``, if any (on the event loop)."""
        done = self._published.pop(mid, None)
        if done is not None and not done.done():
            done.set_result(None)


class _BufferedSocket:
    """A socket whose ``recv`` serves paho's small reads from one large read."""

    def __init__(self, sock: SocketLike) -> None:
        self._sock = sock
        self._data = b""
        self._position = 0

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" once the peer closed; raises as the socket does when
        nothing is buffered and nothing can be read."""
        start = self._position
        if start >= len(self._data):
            data = self._sock.recv(RECEIVE_CHUNK)
            if not data:
                return b""
            self._data, start = data, 0
        self._position = start + size
        return self._data[start : self._position]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed to paho."""
        return max(0, len(self._data) - self._position)

    def pending(self) -> int:
        """Bytes readable without waiting (paho skips its ``select`` wait while any are)."""
        inner = getattr(self._sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def send(self, buffer: bytes | bytearray) -> int:
        return self._sock.send(buffer)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)


class _BufferedClient(paho.Client):
    """paho's client reading its socket in large chunks, handling every packet already read
    before it waits on the socket again, and giving plain PUBLISH packets to ``plain_message``."""

    plain_message: Callable[[Message], None] | None = None
    """Given each PUBLISH at QoS 0 or 1 without MQTT 5 properties, instead of ``on_message``."""

    def _create_socket(self) -> SocketLike:
        return _BufferedSocket(super()._create_socket())

    def _handle_publish(self) -> MQTTErrorCode:
        """Hand a PUBLISH at QoS 0 or 1 without properties (telemetry, nearly always) straight to
        ``plain_message``, decoded by paho's MQTT 3.1.1 decoder: an MQTT 5 one differs only by its
        empty property-length byte, and paho's MQTT 5 property parsing (~12 µs) and message
        object (~1 µs) are most of what a message costs it. Other packets take paho's own path."""
        header, body = self._in_packet["command"], self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        receive = self.plain_message
        if receive is None or qos > 1 or len(body) < 2:
            return super()._handle_publish()
        if self._protocol == paho.MQTTv5:
            if body[:2] == b"\0\0":  # empty topic: a topic alias, which is a property
                return super()._handle_publish()
            lengths = 2 + int.from_bytes(body[:2], "big") + (2 if qos else 0)  # topic, packet id
            if len(body) <= lengths or body[lengths] != 0:
                return super()._handle_publish()
            body = body[:lengths] + body[lengths + 1 :]
        result = decode_publish(header, body, paho.MQTTv311)
        topic = result.topic.decode(errors="replace")  # brokers refuse topics not UTF-8
        with self._in_callback_mutex:
            receive(Message(topic, bytes(result.payload), qos, result.mid, time.time()))
        if qos and not self._manual_ack:
            return self._send_puback(result.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        """Hand ``message`` to ``on_message``: this client sets no per-topic callbacks, so it
        skips paho's matching of every message against them."""
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READ_BURST):
            rc = super().loop_read(max_packets)
            sock = self._sock
            if rc or not isinstance(sock, _BufferedSocket) or not sock.buffered():
                break
        return rc


def _properties(packet_type: int) -> Properties:
    """Empty MQTT 5 properties for one packet type."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho lacks the hint
