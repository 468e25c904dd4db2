"""The live stream: WebSocket (async) and Server-Sent Events (sync) readers of
``/api/v1/stream``, yielding the server's message models.

The first message of a stream is ``hello`` (the filter in force), read on entering the stream
so a refusal (bad key, unknown filter, server full) raises there. Then come ``telemetry``
(readings as they pass the bus), ``event`` (online/offline, command results, anomalies) and
``gap`` (messages lost because the reader was slow). Message types this client does not know
(from a newer server) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Annotated, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from pydantic import Field, TypeAdapter, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from derim.api.streaming import EventMessage, GapMessage, HelloMessage, TelemetryMessage
from derim.client.errors import (
    ServerUnreachableError,
    UnexpectedResponseError,
    error_for,
    error_from_body,
    raise_for_status,
)
from derim.client.routes import STREAM_SSE, STREAM_WEBSOCKET
from derim.models.common import DeviceType

StreamMessage = Annotated[
    HelloMessage | TelemetryMessage | EventMessage | GapMessage, Field(discriminator="type")
]
MESSAGE_TYPES = frozenset({"hello", "telemetry", "event", "gap"})
SSE_READ_TIMEOUT_S = 45.0
"""Longest silence before an SSE stream counts as lost (the server comments every 15 s)."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest WebSocket message accepted (a burst from a large fleet arrives as one message)."""
CLOSE_STATUS = {4401: 401, 4403: 403, 1013: 409, 1008: 422}
"""The HTTP status a WebSocket refusal means (see ``derim.api.routes.stream``)."""
NORMAL_CLOSE = (1000, 1001)
_messages: TypeAdapter[StreamMessage] = TypeAdapter(StreamMessage)


def stream_query(
    devices: Sequence[str],
    types: Sequence[DeviceType | str],
    groups: Sequence[str],
    fields: Sequence[str],
    events: bool,
) -> dict[str, str]:
    """The stream's filter as query parameters (empty filters left out)."""
    query = {
        "device": ",".join(devices),
        "type": ",".join(str(t) for t in types),
        "group": ",".join(groups),
        "field": ",".join(fields),
    }
    query = {name: value for name, value in query.items() if value}
    if not events:
        query["events"] = "false"
    return query


def parse_message(text: str | bytes) -> StreamMessage | None:
    """A stream message from its JSON; None for a type this client does not know."""
    try:
        return _messages.validate_json(text, extra="ignore")
    except ValidationError as exc:
        if any(error["type"] == "union_tag_invalid" for error in exc.errors()):
            return None
        raise UnexpectedResponseError(f"unreadable stream message: {exc}") from exc


def _expect_hello(message: StreamMessage | None) -> HelloMessage:
    if not isinstance(message, HelloMessage):
        raise UnexpectedResponseError(f"the stream did not start with hello but {message!r}")
    return message


class SseStream:
    """A blocking reader of ``GET /api/v1/stream/sse`` (use ``DerimClient.stream``)."""

    def __init__(self, http: httpx.Client, query: dict[str, str]) -> None:
        self._http = http
        self._query = query
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] = iter(())
        self.hello: HelloMessage | None = None

    def __enter__(self) -> Self:
        timeout = httpx.Timeout(self._http.timeout.connect, read=SSE_READ_TIMEOUT_S)
        request = self._http.build_request(
            "GET", STREAM_SSE.path, params=self._query, timeout=timeout
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{request.url}: {exc!r}") from exc
        self._response = response
        try:
            if not response.is_success:
                response.read()
                raise_for_status(response)
            self._lines = response.iter_lines()
            self.hello = _expect_hello(next(self, None))
        except BaseException:
            response.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()

    def __iter__(self) -> Iterator[StreamMessage]:
        return self

    def __next__(self) -> StreamMessage:
        """The next message; StopIteration when the server ends the stream."""
        data: list[str] = []
        try:
            for line in self._lines:
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    message = parse_message("\n".join(data))
                    data = []
                    if message is not None:
                        return message
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"the stream was lost: {exc!r}") from exc
        raise StopIteration


class WebSocketStream:
    """An asyncio reader of the ``/api/v1/stream`` WebSocket (use
    ``AsyncDerimClient.stream``)."""

    def __init__(
        self, base_url: str, query: dict[str, str], headers: dict[str, str], open_timeout_s: float
    ) -> None:
        scheme, netloc, path, _, _ = urlsplit(base_url)
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        self.url = urlunsplit((scheme, netloc, path + STREAM_WEBSOCKET.path, urlencode(query), ""))
        self._headers = headers
        self._open_timeout_s = open_timeout_s
        self._socket: ClientConnection | None = None
        self.hello: HelloMessage | None = None

    async def __aenter__(self) -> Self:
        try:
            self._socket = await connect(
                self.url,
                additional_headers=self._headers,
                open_timeout=self._open_timeout_s,
                max_size=MAX_MESSAGE_BYTES,
            )
        except InvalidStatus as exc:
            answer = exc.response
            raise error_from_body(
                answer.status_code, bytes(answer.body or b""), answer.reason_phrase
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ServerUnreachableError(f"{self.url}: {exc!r}") from exc
        try:
            self.hello = _expect_hello(await anext(self, None))
        except BaseException:
            await self._socket.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._socket is not None:
            await self._socket.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamMessage:
        """The next message; StopAsyncIteration when the server closes normally, the refusal
        as an ``ApiError`` when it closes with a refusal code."""
        if self._socket is None:
            raise RuntimeError("enter the stream first: async with client.stream(...)")
        while True:
            try:
                text = await self._socket.recv()
            except ConnectionClosed as exc:
                raise _closed(exc) from exc
            message = parse_message(text)
            if message is not None:
                return message


def _closed(exc: ConnectionClosed) -> Exception:
    """What a closed WebSocket means: the end, a refusal, or a lost connection."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    if code in NORMAL_CLOSE:
        return StopAsyncIteration()
    if code in CLOSE_STATUS:
        return error_for(CLOSE_STATUS[code], reason or f"stream refused (close code {code})")
    return ServerUnreachableError(f"the stream was lost: {exc}")
