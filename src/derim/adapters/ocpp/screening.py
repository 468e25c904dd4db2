"""Checks on what a charger sends, before the ``ocpp`` library's handlers see it.

Real chargers deviate from the schemas in small ways (an extra vendor field, a misspelt
optional key). In lenient mode such unknown properties are logged and dropped, and only real
violations (a missing required field, a wrong type, a value outside its enumeration) are
answered with a CallError; in strict mode every schema error is. A frame that is not an OCPP
message at all gets a CallError too (unique id ``-1`` when none can be read), where the library
would stay silent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import fastjsonschema
from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.exceptions import (
    FormationViolationError,
    FormatViolationError,
    OccurenceConstraintViolationError,
    OccurrenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.messages import MessageType, get_validator

log = logging.getLogger(__name__)


class RpcFrameworkError(OCPPError):
    """OCPP 2.0.1: the frame is not a valid RPC message (its id may be unreadable)."""

    code = "RpcFrameworkError"
    default_description = "The frame is not a valid OCPP-J RPC message"


class MessageTypeNotSupportedError(OCPPError):
    """OCPP 2.0.1: a message type id outside 2, 3 and 4."""

    code = "MessageTypeNotSupported"
    default_description = "Unknown message type id"


@dataclass(frozen=True, slots=True)
class Screened:
    """A CALL that passed: its payload, and the unknown properties dropped from it (paths)."""

    payload: dict[str, Any]
    dropped: tuple[str, ...] = ()


def parse_frame(raw: str | bytes, version: str) -> list[Any]:
    """The JSON array of an OCPP-J frame; ``OCPPError`` naming what is wrong otherwise."""
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _frame_error(version, f"not JSON: {exc}") from exc
    if not isinstance(frame, list) or not frame:
        raise _frame_error(version, "an OCPP-J message is a non-empty JSON array")
    kind = frame[0]
    sizes = {MessageType.Call: 4, MessageType.CallResult: 3, MessageType.CallError: 5}
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in sizes:
        detail = f"unknown message type {kind!r}"
        if version == "1.6":
            raise PropertyConstraintViolationError(description=detail)
        raise MessageTypeNotSupportedError(description=detail)
    if len(frame) != sizes[kind] or not isinstance(frame[1], str):
        raise _frame_error(version, f"message type {kind} is {sizes[kind]} elements, id first")
    if kind == MessageType.Call and not (isinstance(frame[2], str) and isinstance(frame[3], dict)):
        raise _frame_error(version, "a CALL is [2, id, action, {payload}]")
    return frame


def unique_id_of(raw: str | bytes) -> str:
    """The unique id of a frame when it can be read, else ``-1`` (as OCPP 2.0.1 asks)."""
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "-1"
    if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str):
        return frame[1]
    return "-1"


def screen_call(action: str, payload: dict[str, Any], version: str, *, strict: bool) -> Screened:
    """Check a CALL's payload against its schema; ``OCPPError`` for a real violation.

    An action without a schema is passed through (the library answers NotImplemented).
    """
    try:
        validator = get_validator(MessageType.Call, action, version)
    except (OSError, ValueError, OCPPError):
        return Screened(payload)
    try:
        _compiled(action, version, validator.schema)(payload)
    except fastjsonschema.JsonSchemaException:
        pass  # find out what is wrong, and whether it can be forgiven, below
    else:
        return Screened(payload)
    errors = list(validator.iter_errors(payload))
    if not errors:
        return Screened(payload)
    unknown = [e for e in errors if e.validator == "additionalProperties"]
    serious = [e for e in errors if e.validator != "additionalProperties"]
    if serious or strict:
        raise _violation(version, (serious or unknown)[0])
    dropped = tuple(_drop_unknown(unknown))
    return Screened(payload, dropped)


def _compiled(action: str, version: str, schema: dict[str, Any]) -> Callable[[Any], Any]:
    """The schema compiled to Python (``fastjsonschema``): the check of a valid message, the
    common case, costs a small fraction of a ``jsonschema`` walk. Cached per action."""
    key = (action, version)
    check = _COMPILED.get(key)
    if check is None:
        check = _COMPILED[key] = fastjsonschema.compile(schema)
    return check


_COMPILED: dict[tuple[str, str], Callable[[Any], Any]] = {}


def _drop_unknown(errors: Iterable[SchemaError]) -> Iterable[str]:
    """Remove the properties the schema does not know from the objects holding them."""
    for error in errors:
        instance, known = error.instance, error.schema.get("properties", {})
        if not isinstance(instance, dict):
            continue
        path = "/".join(str(p) for p in error.absolute_path)
        for name in [n for n in instance if n not in known]:
            del instance[name]
            yield f"{path}/{name}" if path else name


def _violation(version: str, error: SchemaError) -> OCPPError:
    """The CallError that a schema error calls for, with the offending path."""
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    detail = f"{where}: {error.message}"
    if error.validator == "required":
        if version == "1.6":  # the 1.6 specification spells the code this way
            return OccurenceConstraintViolationError(description=detail)
        return OccurrenceConstraintViolationError(description=detail)
    if error.validator in ("type", "maxLength", "enum"):
        return TypeConstraintViolationError(description=detail)
    if error.validator == "additionalProperties":
        return format_error(version, detail)
    return PropertyConstraintViolationError(description=detail)


def format_error(version: str, detail: str) -> OCPPError:
    """1.6 calls a malformed payload FormationViolation, 2.0.1 FormatViolation."""
    if version == "1.6":
        return FormationViolationError(description=detail)
    return FormatViolationError(description=detail)


def _frame_error(version: str, detail: str) -> OCPPError:
    """A frame that is no RPC message: FormationViolation (1.6), RpcFrameworkError (2.0.1)."""
    if version == "1.6":
        return FormationViolationError(description=detail)
    return RpcFrameworkError(description=detail)
