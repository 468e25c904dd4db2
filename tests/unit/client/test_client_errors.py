"""The client's reading of answers at the transport seam: error statuses become the client's
exception tree with the server's detail, odd answers are named, the stream parses SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest

from derim.api.streaming import HelloMessage, TelemetryMessage
from derim.client import (
    AsyncDerimClient,
    AuthError,
    BadRequestError,
    DerimClient,
    RateLimitError,
    RequestConflictError,
    ResourceNotFoundError,
    ServerError,
    ServerUnreachableError,
    UnexpectedResponseError,
)

Handler = Callable[[httpx.Request], httpx.Response]
DEVICE = {"id": "m1", "device_type": "meter", "connection": {"protocol": "http"}}


def client(handler: Handler) -> DerimClient:
    return DerimClient("http://derim.test", transport=httpx.MockTransport(handler))


def answering(status: int, body: object = None, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def test_a_422_carries_the_detail_and_each_field() -> None:
    """A validation answer is BadRequestError with the server's detail and field paths."""
    problem = {"field": "body.value", "message": "too big", "type": "less_than"}
    body = {"detail": "invalid request: body.value: too big", "errors": [problem]}
    with pytest.raises(BadRequestError) as caught:
        client(answering(422, body)).send_command("m1", {"command": "set_active_power"})
    assert caught.value.status == 422
    assert caught.value.detail == body["detail"]
    assert caught.value.fields == {"body.value"}


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthError), (403, AuthError), (404, ResourceNotFoundError),
     (409, RequestConflictError), (413, BadRequestError), (503, ServerError),
     (504, ServerError)],
)  # fmt: skip
def test_each_status_has_its_error(status: int, kind: type[Exception]) -> None:
    """Statuses map to their class, keeping the detail."""
    with pytest.raises(kind, match="the detail"):
        client(answering(status, {"detail": "the detail"})).get_device("m1")


def test_a_429_says_when_to_retry() -> None:
    """Retry-After (seconds) is kept on RateLimitError."""
    with pytest.raises(RateLimitError) as caught:
        client(answering(429, {"detail": "slow down"}, **{"Retry-After": "3"})).health()
    assert caught.value.retry_after_s == 3.0


def test_a_non_json_error_keeps_its_text() -> None:
    """A proxy's HTML or text error still becomes the status's class, with the text."""
    with pytest.raises(ServerError, match="bad gateway from proxy"):
        client(answering(502, "bad gateway from proxy")).health()


def test_no_answer_is_server_unreachable() -> None:
    """A refused connection is ServerUnreachableError, not an httpx exception."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ServerUnreachableError, match="connection refused"):
        client(refuse).list_devices()


def test_an_answer_of_another_shape_is_named() -> None:
    """A success whose body is not the documented model is UnexpectedResponseError."""
    with pytest.raises(UnexpectedResponseError, match="GET /api/v1/devices/m1"):
        client(answering(200, {"name": "no id"})).get_device("m1")


def test_fields_a_newer_server_adds_are_ignored() -> None:
    """Unknown fields, even in a strict server model, do not break the client."""
    body = {**DEVICE, "added_later": 1, "connection": {"protocol": "http", "new": True}}
    device = client(answering(200, body)).get_device("m1")
    assert device.id == "m1"
    assert device.status is None


def sse(*messages: dict[str, object]) -> bytes:
    frames = [b": keep-alive\n\n"]
    for message in messages:
        data = orjson.dumps(message)
        frames.append(b"event: " + str(message["type"]).encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(frames)


HELLO = {"type": "hello", "devices": ["m1"], "device_types": [], "groups": [], "fields": [],
         "events": True}  # fmt: skip


def test_the_sse_stream_yields_messages_after_hello() -> None:
    """hello is read on entry; comments and unknown message types are skipped; the stream
    ends when the server closes it."""
    reading = {"type": "telemetry", "records": [{"device_id": "m1", "power_kw": 1.5}]}
    body = sse(HELLO, {"type": "future-kind", "x": 1}, reading)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["device"] == "m1"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with client(handler).stream(devices=["m1"]) as stream:
        assert stream.hello == HelloMessage.model_validate(HELLO)
        assert list(stream) == [TelemetryMessage.model_validate(reading)]


def test_a_refused_sse_stream_raises_on_entry() -> None:
    """An error status of the stream route raises its error when the stream is entered."""
    refused = answering(422, {"detail": "invalid request: field: unknown field(s) nope"})
    with (
        pytest.raises(BadRequestError, match="unknown field"),
        client(refused).stream(fields=["nope"]),
    ):
        pass


def test_the_async_client_maps_errors_alike() -> None:
    """The async client raises the same classes with the same detail."""

    async def run() -> None:
        transport = httpx.MockTransport(answering(404, {"detail": "unknown device 'x'"}))
        async with AsyncDerimClient("http://derim.test", transport=transport) as http:
            with pytest.raises(ResourceNotFoundError, match="unknown device"):
                await http.get_device("x")

    asyncio.run(run())
