"""Validation of raw readings pushed by clients (HTTP batches, CSV imports) into canonical records.

Each reading is validated by the telemetry class of its device's type, so a battery reading may
carry ``soc_percent`` but a meter reading may not; errors name the reading's index and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from derim.errors import InvalidRequestError, NotFoundError
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE, DERTelemetry

MAX_ERRORS = 20


@cache
def _list_adapter(cls: type[DERTelemetry]) -> TypeAdapter[list[DERTelemetry]]:
    return TypeAdapter(list[cls])  # type: ignore[valid-type]  # cls is a runtime class


def validate_readings(
    items: Any, lookup: Callable[[str], DERDevice | None], *, location: str = "body"
) -> list[DERTelemetry]:
    """Validate a JSON list of readings; raises ``InvalidRequestError`` or ``NotFoundError``.

    ``lookup`` finds the registered device of each reading (unknown devices are refused).
    """
    if not isinstance(items, list):
        raise InvalidRequestError(location, "expected a JSON array of readings")
    groups: dict[DeviceType, tuple[list[int], list[Any]]] = {}
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        device_id = item.get("device_id") if isinstance(item, dict) else None
        if not isinstance(device_id, str):
            errors.append(_error(location, index, "device_id", "required string field missing"))
            continue
        device = lookup(device_id)
        if device is None:
            raise NotFoundError("device", device_id)
        indices, group = groups.setdefault(device.device_type, ([], []))
        indices.append(index)
        group.append(item)
    records: list[tuple[int, DERTelemetry]] = []
    for device_type, (indices, group) in groups.items():
        cls = TELEMETRY_BY_DEVICE_TYPE[device_type]
        try:
            validated = _list_adapter(cls).validate_python(group)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                position, *path = err["loc"]
                field = ".".join(str(p) for p in path) or "reading"
                errors.append(_error(location, indices[int(position)], field, err["msg"]))
            continue
        records.extend(zip(indices, validated, strict=True))
    if errors:
        errors.sort(key=lambda e: e["index"])
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidRequestError(location, shown + more, errors[:MAX_ERRORS])
    if len(groups) > 1:
        records.sort(key=lambda pair: pair[0])
    return [record for _, record in records]


def _error(location: str, index: int, field: str, message: str) -> dict[str, Any]:
    return {"field": f"{location}[{index}].{field}", "index": index, "message": message}
