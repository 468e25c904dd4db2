"""``WS /api/v1/stream`` and ``GET /api/v1/stream/sse``: live telemetry and events.

Both take the same filters (``device``, ``type``, ``group``, ``field``, each repeatable or
comma-separated; ``events=false`` for telemetry only) and the same keys and roles as the rest of
the API (viewer). Browsers cannot set headers on a WebSocket or an EventSource, so the key may
also come as ``?api_key=``. Both are described by the AsyncAPI document at
``GET /api/v1/stream/asyncapi.json``, not by the OpenAPI one (an endless response is not an
operation a REST client or fuzzer can call).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketState

from derim.api.auth import Viewer, authenticate, presented_token
from derim.api.deps import get_services
from derim.api.streaming import (
    EventMessage,
    GapMessage,
    HelloMessage,
    StreamClient,
    StreamFilter,
    StreamHub,
    TelemetryMessage,
)
from derim.errors import (
    AuthenticationError,
    ConflictError,
    DerimError,
    InvalidRequestError,
    PermissionDeniedError,
)
from derim.models.common import DeviceType
from derim.security.keys import Role
from derim.storage.base import FIELD_TYPES

router = APIRouter(tags=["stream"])
KEEPALIVE_S = 15.0
"""An SSE comment is sent after this long without a message, so proxies keep the stream open."""
ListQuery = Annotated[list[str] | None, Query()]
TypeQuery = Annotated[list[str] | None, Query(alias="type", description="Device types.")]
CLOSE_CODES = {AuthenticationError: 4401, PermissionDeniedError: 4403, ConflictError: 1013}
"""WebSocket close codes for refusals (4401/4403 mirror HTTP 401/403; 1013 try again later)."""


def stream_filter(
    device: list[str] | None,
    device_type: list[str] | None,
    group: list[str] | None,
    field: list[str] | None,
    events: bool,
) -> StreamFilter:
    """The filter from query values; InvalidRequestError names an unknown type or field."""
    types = _split(device_type)
    unknown_types = types - {t.value for t in DeviceType}
    if unknown_types:
        raise InvalidRequestError(
            "type", f"unknown device type(s) {', '.join(sorted(unknown_types))}"
        )
    fields = _split(field)
    unknown_fields = fields - set(FIELD_TYPES)
    if unknown_fields:
        raise InvalidRequestError("field", f"unknown field(s) {', '.join(sorted(unknown_fields))}")
    return StreamFilter(_split(device), types, _split(group), fields, events)


def _split(values: list[str] | None) -> frozenset[str]:
    """Repeated and comma-separated query values as one set."""
    return frozenset(v.strip() for value in values or () for v in value.split(",") if v.strip())


def _hub(app_state: Any) -> StreamHub:
    hub: StreamHub = app_state.stream_hub
    return hub


@router.websocket("/api/v1/stream")
async def stream_websocket(
    websocket: WebSocket,
    device: ListQuery = None,
    device_type: TypeQuery = None,
    group: ListQuery = None,
    field: ListQuery = None,
    events: bool = True,
    api_key: str | None = None,
) -> None:
    """Telemetry and events as JSON text frames; the first is ``hello`` with the filter."""
    services = websocket.app.state.services
    headers = websocket.headers
    try:
        token = presented_token(headers.get("authorization"), headers.get("x-api-key"), api_key)
        authenticate(services, token, Role.VIEWER)
        client = _hub(websocket.app.state).connect(
            stream_filter(device, device_type, group, field, events)
        )
    except DerimError as exc:
        # Accepted first so that the close code and reason reach the client (a browser sees
        # nothing of a refused handshake).
        code = next((c for kind, c in CLOSE_CODES.items() if isinstance(exc, kind)), 1008)
        await websocket.accept()
        await websocket.close(code=code, reason=str(exc)[:120])
        return
    await websocket.accept()
    sender = asyncio.create_task(_send_all(websocket, client))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        _hub(websocket.app.state).disconnect(client)


async def _send_all(websocket: WebSocket, client: StreamClient) -> None:
    """Send the client's messages as they come, until the socket closes."""
    while websocket.client_state == WebSocketState.CONNECTED:
        await websocket.send_text(await client.next())


@router.get("/api/v1/stream/sse", response_class=StreamingResponse, include_in_schema=False)
async def stream_sse(
    request: Request,
    device: ListQuery = None,
    device_type: TypeQuery = None,
    group: ListQuery = None,
    field: ListQuery = None,
    events: bool = True,
    api_key: str | None = None,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The same messages as Server-Sent Events (``event:`` is the message type)."""
    authenticate(
        get_services(request), presented_token(authorization, x_api_key, api_key), Role.VIEWER
    )
    hub = _hub(request.app.state)
    client = hub.connect(stream_filter(device, device_type, group, field, events))
    return StreamingResponse(
        _sse(hub, client),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(hub: StreamHub, client: StreamClient) -> AsyncIterator[bytes]:
    """Server-Sent Events frames for the client, with keep-alive comments."""
    try:
        while True:
            try:
                message = await asyncio.wait_for(client.next(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            kind = orjson.loads(message)["type"]
            yield f"event: {kind}\ndata: {message}\n\n".encode()
    finally:
        hub.disconnect(client)


@router.get("/api/v1/stream/asyncapi.json")
async def asyncapi_document(caller: Viewer) -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the stream: channels, filters and message schemas."""
    return ASYNCAPI


def _asyncapi() -> dict[str, Any]:
    messages = {
        model.__name__: {"name": model.__name__, "payload": model.model_json_schema()}
        for model in (HelloMessage, TelemetryMessage, EventMessage, GapMessage)
    }
    parameters = {
        "device": "Device ids (repeatable or comma-separated).",
        "type": "Device types: " + ", ".join(t.value for t in DeviceType) + ".",
        "group": "Device groups.",
        "field": "Telemetry fields to include (device_id and timestamp always are).",
        "events": "false: telemetry only.",
        "api_key": "The API key, for clients that cannot set headers (browsers).",
    }
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}
    channels = {
        name: {
            "address": address,
            "description": f"{description} Query parameters: "
            + "; ".join(f"{k}: {v}" for k, v in parameters.items()),
            "messages": channel_messages,
        }
        for name, address, description in (
            ("websocket", "/api/v1/stream", "JSON text frames over a WebSocket."),
            ("sse", "/api/v1/stream/sse", "Server-Sent Events; the event name is the type."),
        )
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "DERIM live stream",
            "version": "1",
            "description": "Canonical readings as they pass the bus and device events. A slow "
            "client loses its oldest messages and gets a gap message with the count.",
        },
        "channels": channels,
        "operations": {
            f"receive_{name}": {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{name}"},
                "messages": [
                    {"$ref": f"#/channels/{name}/messages/{message}"} for message in messages
                ],
            }
            for name in channels
        },
        "components": {"messages": messages},
    }


ASYNCAPI = _asyncapi()
