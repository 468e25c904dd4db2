"""The MQTT adapter: every mapped topic of one broker to stored records, commands back out.

Each batch of messages from the client is decoded through the mappings; the records are
published to the bus and waited for until stored (or spooled), the rejects until committed to
the dead-letter store, and only then are the QoS 1 messages acknowledged to the broker. A device
first seen in a mapping is registered (``mqtt_register_unknown``), with the route's device type.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import ValidationError

from derim.adapters.base import ConnectionState, DeviceStatus, Publish, StatusChanged
from derim.adapters.mqtt.client import Message, MqttClient
from derim.adapters.mqtt.decode import Reading, decode
from derim.adapters.mqtt.mapping import (
    CommandTopics,
    Mapping,
    Route,
    route_for,
    topic_matches,
)
from derim.errors import DerimError, InvalidRequestError, ProtocolError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandStatus
from derim.models.device import DERDevice, MqttConnection
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE, DERTelemetry
from derim.storage.registry import DeviceRegistry
from derim.storage.rejects import Reject, RejectStore

log = logging.getLogger(__name__)

ROUTE_CACHE_SIZE = 100_000
"""Topics whose route is remembered; the cache starts over when full."""
RETRY_S = 1.0
"""Pause before storing a batch again after storage refused it (s)."""


class _Answers(Enum):
    """The route of a topic that carries the answers of devices to commands."""

    RESPONSE = "response"


@dataclass(slots=True)
class MqttCounters:
    """Messages since start: each is stored as records or rejected, never neither."""

    messages: int = 0
    records: int = 0
    rejected: int = 0


class MqttAdapter:
    """Ingests one broker through ``mappings`` and publishes commands to MQTT devices.

    One adapter serves every MQTT device (they share the broker connection), so commands name
    their device: ``send_to(device, command)``.
    """

    def __init__(
        self,
        client: MqttClient,
        mappings: Sequence[Mapping],
        registry: DeviceRegistry,
        rejects: RejectStore,
        *,
        register_unknown: bool = True,
    ) -> None:
        self.client = client
        self.mappings = list(mappings)
        self.registry = registry
        self.rejects = rejects
        self.register_unknown = register_unknown
        self.counters = MqttCounters()
        self._last_seen: dict[str, datetime] = {}
        self._responses: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.status_changed: StatusChanged | None = None
        """Told of every MQTT device's change of state when the broker connection changes."""
        client.connection_changed = self._connection_changed
        self._response_filters = MqttAdapter.filters(self.mappings, None)[1]
        self._routes: dict[str, Route | _Answers | None] = {}

    @staticmethod
    def filters(
        mappings: Sequence[Mapping], shared_group: str | None
    ) -> tuple[list[str], list[str]]:
        """Subscriptions: the mapped topics (shared by ``$share/<group>/`` when a group is
        given) and, never shared, the command response topics."""
        prefix = f"$share/{shared_group}/" if shared_group else ""
        data = [prefix + route.topic for mapping in mappings for route in mapping.routes]
        responses = [
            mapping.commands.response_topic.replace("{device_id}", "+")
            for mapping in mappings
            if mapping.commands is not None and mapping.commands.response_topic is not None
        ]
        return data, responses

    async def run(self, publish: Publish) -> None:
        """Ingest until cancelled; ``publish`` must return once the records are stored."""
        await self.client.start()
        try:
            while True:
                batch = await self.client.messages()
                await self._ingest(batch, publish)
                self.client.ack(batch)
        finally:
            await self.client.stop()

    def _connection_changed(self, connected: bool) -> None:
        """Every registered MQTT device goes online or offline with the broker connection."""
        if self.status_changed is None:
            return
        previous = ConnectionState.OFFLINE if connected else ConnectionState.ONLINE
        for device in self.registry.list():
            if device.protocol == "mqtt":
                self.status_changed(device.id, previous, self.status(device.id))

    def status(self, device_id: str) -> DeviceStatus:
        """The broker connection's state, with the last message seen from ``device_id``."""
        state = ConnectionState.ONLINE if self.client.connected else ConnectionState.OFFLINE
        return DeviceStatus(
            state=state,
            last_seen=self._last_seen.get(device_id),
            last_error=self.client.last_error,
        )

    async def _ingest(self, batch: Sequence[Message], publish: Publish) -> None:
        records: list[DERTelemetry] = []
        rejects: list[Reject] = []
        for message in batch:
            route = self._route(message.topic)
            if message.correlation is not None or route is _Answers.RESPONSE:
                self._answer(message)
                continue
            try:
                records += await self._records(message, route)
            except ProtocolError as exc:
                rejects.append(_reject(message, str(exc)))
        if records:
            await _until_done(lambda: publish(records), "store records")
            self.counters.records += len(records)
        if rejects:
            await _until_done(lambda: self.rejects.add(rejects), "store rejects")
            self.counters.rejected += len(rejects)
            log.warning("mqtt: %d message(s) rejected, first: %s", len(rejects), rejects[0].reason)
        self.counters.messages += len(batch)

    async def _records(self, message: Message, route: Route | None) -> list[DERTelemetry]:
        if route is None:
            raise ProtocolError(f"no mapping for topic {message.topic!r}")
        arrived = datetime.fromtimestamp(message.received_at, UTC)
        records = []
        for reading in decode(route, message.topic, message.payload):
            device = self.registry.find(reading.device_id)
            if device is None or device.device_type is not reading.device_type:
                await self._known(reading, message.topic)
            records.append(_record(reading, arrived))
            self._last_seen[reading.device_id] = arrived
        return records

    def _route(self, topic: str) -> Route | _Answers | None:
        """What ``topic`` carries, remembered per topic: answers to commands, else the readings
        of the first route of the mappings that takes it (None when none does)."""
        if topic in self._routes:
            return self._routes[topic]
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        route: Route | _Answers | None
        if any(topic_matches(pattern, topic) for pattern in self._response_filters):
            route = _Answers.RESPONSE
        else:
            found = (route_for(mapping, topic) for mapping in self.mappings)
            route = next((each for each in found if each is not None), None)
        self._routes[topic] = route
        return route

    async def _known(self, reading: Reading, topic: str) -> None:
        """Check (or register) the reading's device; ``ProtocolError`` if it cannot be taken."""
        device = self.registry.find(reading.device_id)
        if device is None:
            if not self.register_unknown:
                raise ProtocolError(f"device {reading.device_id!r} is not registered")
            device = DERDevice(
                id=reading.device_id,
                name=reading.device_id,
                device_type=reading.device_type,
                connection=MqttConnection(protocol="mqtt", topic=topic),
            )
            await self.registry.upsert(device)
            log.info("mqtt: registered %s (%s)", device.id, device.device_type.value)
        elif device.device_type is not reading.device_type:
            raise ProtocolError(
                f"device {device.id!r} is a {device.device_type.value}, the mapping says"
                f" {reading.device_type.value}"
            )

    def commands_for(self, device: DERDevice) -> CommandTopics:
        """The command topics of the mapping that carries ``device``; ``InvalidRequestError`` if
        it has none."""
        topic = device.connection.topic if isinstance(device.connection, MqttConnection) else ""
        for mapping in self.mappings:
            if mapping.commands is not None and any(
                topic_matches(route.topic, topic) for route in mapping.routes
            ):
                return mapping.commands
        raise InvalidRequestError("device_id", f"no MQTT mapping has commands for {device.id!r}")

    async def send_to(self, device: DERDevice, command: CommandRequest) -> CommandResult:
        """Publish ``command`` to the device's command topic.

        Without a response topic the result is ``sent`` once the broker has it (PUBACK): the
        device's answer is unknown. With one, it waits ``timeout_s`` for the device's answer
        (``{"status": "acknowledged" | "rejected", "message": ...}``, matched by MQTT 5
        correlation data or a ``command_id`` field) and reports it, or ``timed_out``.
        """
        topics = self.commands_for(device)
        result = CommandResult(device_id=device.id, request=command)
        body = {
            "command_id": str(result.command_id),
            "command": command.command.value,
            "value": command.value,
            "unit": command.unit,
            "parameters": command.parameters,
        }
        correlation = str(result.command_id).encode()
        response_topic = (
            None
            if topics.response_topic is None
            else topics.response_topic.replace("{device_id}", device.id)
        )
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if response_topic is not None:
            self._responses[correlation] = answer
        try:
            await self.client.publish(
                topics.topic.replace("{device_id}", device.id),
                json.dumps(body).encode(),
                qos=topics.qos,
                response_topic=response_topic,
                correlation=correlation,
            )
            result.history.append((CommandStatus.SENT, datetime.now(UTC)))
            if response_topic is None:
                result.status = CommandStatus.SENT
                result.message = "published; the device gives no answer on this mapping"
                return result
            try:
                async with asyncio.timeout(topics.timeout_s):
                    response = await answer
            except TimeoutError:
                result.status = CommandStatus.TIMED_OUT
                result.message = f"no answer on {response_topic} within {topics.timeout_s} s"
            else:
                status = response.get("status")
                result.status = (
                    CommandStatus.ACKNOWLEDGED if status == "acknowledged"
                    else CommandStatus.REJECTED
                )  # fmt: skip
                result.message = str(response.get("message", status))
                result.device_response = response
        finally:
            self._responses.pop(correlation, None)
        result.history.append((result.status, datetime.now(UTC)))
        return result

    def _answer(self, message: Message) -> None:
        """Hand a command response to the command waiting for it (others are logged)."""
        try:
            response = json.loads(message.payload)
        except ValueError:
            response = {"status": "rejected", "message": message.payload.decode(errors="replace")}
        if not isinstance(response, dict):
            response = {"status": "rejected", "message": str(response)}
        key = message.correlation or str(response.get("command_id", "")).encode()
        waiting = self._responses.get(key)
        if waiting is None or waiting.done():
            log.info("mqtt: answer on %s matches no waiting command", message.topic)
            return
        waiting.set_result(response)

    async def aclose(self) -> None:
        """Disconnect (``run`` does it when cancelled)."""
        try:
            await self.client.stop()
        except TransportError as exc:
            log.debug("mqtt: error while closing: %s", exc)


async def _until_done(step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step`` until it succeeds, retrying every ``RETRY_S``: the batch stays unacknowledged
    (the broker keeps it) while storage refuses it."""
    while True:
        try:
            await step()
            return
        except DerimError as exc:
            log.error("mqtt: could not %s, retrying in %.0f s: %s", what, RETRY_S, exc)
        await asyncio.sleep(RETRY_S)


def _record(reading: Reading, arrived: datetime) -> DERTelemetry:
    """The canonical record of ``reading`` (stamped ``arrived`` when it carries no time)."""
    telemetry = TELEMETRY_BY_DEVICE_TYPE[reading.device_type]
    try:
        return telemetry.model_validate(
            {
                "device_id": reading.device_id,
                "timestamp": reading.timestamp or arrived,
                **reading.fields,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise ProtocolError(f"out-of-range values: {problems}") from exc


def _reject(message: Message, reason: str) -> Reject:
    return Reject(
        source="mqtt",
        topic=message.topic,
        reason=reason,
        payload=message.payload,
        received_at=datetime.fromtimestamp(message.received_at, UTC),
    )
