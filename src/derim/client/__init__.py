"""A typed Python client of DERIM's REST API and live stream.

``DerimClient`` blocks (its stream is Server-Sent Events); ``AsyncDerimClient`` is for asyncio
(its stream is the WebSocket). Both return the server's own models (``derim.models`` and
friends) and raise the errors of ``derim.client.errors``. The twin's request models are in
``derim.client.twin_models``: ``from derim.client.twin_models import Scenario, TrainRequest``.
"""

from derim.api.views import DeviceView
from derim.client.aio import AsyncDerimClient
from derim.client.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    DerimClientError,
    FieldError,
    RateLimitError,
    RequestConflictError,
    ResourceNotFoundError,
    ServerError,
    ServerUnreachableError,
    UnexpectedResponseError,
)
from derim.client.models import TelemetryPage, telemetry_frame
from derim.client.stream import SseStream, StreamMessage, WebSocketStream
from derim.client.sync import DerimClient

__all__ = [
    "ApiError",
    "AsyncDerimClient",
    "AuthError",
    "BadRequestError",
    "DerimClient",
    "DerimClientError",
    "DeviceView",
    "FieldError",
    "RateLimitError",
    "RequestConflictError",
    "ResourceNotFoundError",
    "ServerError",
    "ServerUnreachableError",
    "SseStream",
    "StreamMessage",
    "TelemetryPage",
    "UnexpectedResponseError",
    "WebSocketStream",
    "telemetry_frame",
]
