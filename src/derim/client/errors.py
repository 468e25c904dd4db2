"""What the client raises: one tree, each error carrying the server's problem detail.

Every failing answer of the API has the body ``{"detail": str, "errors": [{"field", "message",
"type"}]}`` (``derim.api.errors``); the client turns its status into one class below and keeps
the detail and the per-field errors. A server that cannot be reached is
``ServerUnreachableError``; an answer the client cannot read is ``UnexpectedResponseError``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from derim.errors import DerimError


class FieldError(BaseModel):
    """One problem with a request: where (a dotted path, ``body[3].soc_percent``) and what."""

    model_config = ConfigDict(extra="allow", frozen=True)

    field: str
    message: str
    type: str | None = None


class DerimClientError(DerimError):
    """Base of every error the client raises."""


class ServerUnreachableError(DerimClientError):
    """No answer: connection refused, name not resolved, timed out, stream handshake failed."""


class UnexpectedResponseError(DerimClientError):
    """The server answered with a body the client cannot read (not JSON, or another shape)."""


class ApiError(DerimClientError):
    """The server refused the request; ``status`` is the HTTP status (or a WebSocket close
    code), ``detail`` the server's message and ``errors`` its per-field problems."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = errors or []

    @property
    def fields(self) -> set[str]:
        """The dotted paths the server named as wrong."""
        return {error.field for error in self.errors}


class AuthError(ApiError):
    """401: no key or an unknown one; 403: the key's role may not do this."""


class RateLimitError(ApiError):
    """429: the key is over its request budget; retry after ``retry_after_s`` seconds."""

    retry_after_s: float = 1.0


class ResourceNotFoundError(ApiError):
    """404: no such device, command, schedule, job, model or reading."""


class RequestConflictError(ApiError):
    """409: the request conflicts with the current state, or the device refused the command."""


class BadRequestError(ApiError):
    """400, 413, 415 or 422: the request is invalid; ``errors`` names each bad field."""


class ServerError(ApiError):
    """5xx: 502 the device answered garbage, 503 device or storage unreachable, 504 timed out,
    500 a bug in the server."""


ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: ResourceNotFoundError,
    409: RequestConflictError,
    413: BadRequestError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_for(status: int, detail: str, errors: list[FieldError] | None = None) -> ApiError:
    """The client error of an HTTP status (a class by range for statuses not listed)."""
    kind = ERROR_BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else BadRequestError if status >= 400 else ApiError
    return kind(status, detail, errors)


def raise_for_status(response: httpx.Response) -> None:
    """Raise the client error matching a failing ``response``; return for a success."""
    if response.is_success:
        return
    error = error_from_body(response.status_code, response.content, response.reason_phrase)
    if isinstance(error, RateLimitError):
        error.retry_after_s = _retry_after(response.headers.get("retry-after"))
    raise error


def error_from_body(status: int, content: bytes, reason: str) -> ApiError:
    """The client error of a failing answer: the body's detail and per-field errors, or its
    raw text (``reason`` when empty) when it is not a DERIM error body."""
    try:
        body: Any = json.loads(content)
    except ValueError:
        text = content.decode(errors="replace").strip()[:500]
        return error_for(status, text or reason)
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        return error_for(status, str(body)[:500])
    try:
        errors = [FieldError.model_validate(item) for item in body.get("errors") or ()]
    except ValidationError:
        errors = []
    return error_for(status, body["detail"], errors)


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header in seconds (1 when absent or a date)."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0
