"""The DERIM exception tree.

Library exceptions are translated into these at one boundary per component (``raise ... from exc``);
HTTP status codes are assigned in one place, ``derim.api.errors``.
"""

from typing import Any


class DerimError(Exception):
    """Base of every error DERIM raises on purpose."""


class ConfigError(DerimError):
    """Invalid settings or fleet file; the message names the field path."""


class NotFoundError(DerimError):
    """A referenced entity (device, command, ...) does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"unknown {kind} {key!r}")
        self.kind = kind
        self.key = key


class ConflictError(DerimError):
    """The request conflicts with existing state (for example a duplicate device id)."""


class AuthenticationError(DerimError):
    """The caller gave no API key, or one that is unknown or revoked."""


class PermissionDeniedError(DerimError):
    """The caller's role may not do this."""


class RateLimitedError(DerimError):
    """The caller sent more requests than its key may; ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidRequestError(DerimError):
    """A request is invalid; ``field`` names the culprit, ``details`` lists every problem.

    Each detail is a dict with at least ``field`` (a dotted path) and ``message``.
    """

    def __init__(
        self, field: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.details = details or [{"field": field, "message": message}]


class UnsupportedMediaTypeError(DerimError):
    """The request body is in a format the route does not take (such as text/plain for JSON)."""


class StorageError(DerimError):
    """The storage backend failed."""


class StorageUnavailableError(StorageError):
    """The storage backend cannot be reached; writes go to the spool, reads fail with 503."""


class TwinError(DerimError):
    """Forecasting, anomaly detection or simulation failed."""


class AdapterError(DerimError):
    """A protocol adapter failed."""


class TransportError(AdapterError):
    """Connecting to or talking with a device failed (connect refused, timeout); retryable."""


class ProtocolError(AdapterError):
    """The peer sent something that cannot be decoded."""


class DeviceRejected(AdapterError):  # noqa: N818 - the name states the outcome, as in the spec
    """The device answered and refused the request (exception code, CallError, Rejected status)."""
