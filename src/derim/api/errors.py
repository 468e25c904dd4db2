"""The one place where errors become HTTP status codes.

validation 422 (a body that cannot be decoded as JSON included), unsupported body format 415,
unknown 404, conflict or device rejection 409, storage or transport unavailable 503, timeout 504
(413 for oversized bodies comes from ``derim.api.limits``). Anything else is a bug and gets 500
with no details leaked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from derim.api.responses import JSONResponse
from derim.errors import (
    AuthenticationError,
    ConflictError,
    DerimError,
    DeviceRejected,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    StorageError,
    TransportError,
    TwinError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)


STATUS_BY_ERROR: list[tuple[type[DerimError], int]] = [
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (RateLimitedError, 429),
    (NotFoundError, 404),
    (ConflictError, 409),
    (DeviceRejected, 409),
    (InvalidRequestError, 422),
    (TwinError, 422),
    (UnsupportedMediaTypeError, 415),
    (ProtocolError, 502),
    (TransportError, 503),
    (StorageError, 503),
]


class FieldError(BaseModel):
    """One problem with a request: where (a dotted path, ``body[3].soc_percent``) and what."""

    model_config = ConfigDict(extra="allow")

    field: str
    message: str
    type: str | None = None


class ErrorBody(BaseModel):
    """The JSON body of every error response."""

    detail: str
    errors: list[FieldError] | None = None


def status_for(error: DerimError) -> int:
    """The HTTP status of a DERIM error (500 for a kind no rule covers)."""
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return (
                504 if isinstance(error, TransportError) and "timed out" in str(error) else status
            )
    return 500


def describe_errors(
    errors: Sequence[Any], prefix: Sequence[str | int] = ()
) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to ``field`` (dotted path), ``message`` and ``type``."""
    described = []
    for err in errors:
        loc = [*prefix, *err.get("loc", ())]
        described.append(
            {
                "field": ".".join(str(part) for part in loc) or "body",
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return described


def error_response(status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> Any:
    """The JSON error body every failure uses: ``detail`` and optional per-field ``errors``."""
    content: dict[str, Any] = {"detail": detail}
    if errors:
        content["errors"] = errors
    return JSONResponse(content, status_code=status)


def document_error_body(app: FastAPI) -> None:
    """Describe the 422 body as ``ErrorBody`` in the OpenAPI schema, which is what the handlers
    below send, instead of FastAPI's default (a list of pydantic errors in ``detail``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in components:
                body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components["HTTPValidationError"] = body
                components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that map every error to its status code (and document the body)."""
    document_error_body(app)

    @app.exception_handler(DerimError)
    async def _derim(_: Request, exc: DerimError) -> Any:
        status = status_for(exc)
        if status == 500:
            log.exception("unexpected error", exc_info=exc)
            return error_response(500, "internal error")
        if isinstance(exc, InvalidRequestError):
            return error_response(status, f"invalid request: {exc}", exc.details)
        response = error_response(status, str(exc))
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="derim"'
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Any:
        errors = describe_errors(exc.errors())
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(422, f"invalid request: {summary}", errors)

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> Any:
        errors = describe_errors(exc.errors(include_url=False))
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return error_response(422, f"invalid request: {summary}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's 400 for a body it could not decode (not UTF-8, nested too deeply):
            # invalid JSON, as ``POST /api/v1/telemetry`` and FastAPI's own syntax errors say.
            message = "invalid JSON: not UTF-8 or nested too deeply"
            return error_response(422, f"invalid request: body: {message}",
                                  [{"field": "body", "message": message}])  # fmt: skip
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Any:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal error")
