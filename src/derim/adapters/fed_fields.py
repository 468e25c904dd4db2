"""The check every profile format (Modbus, IEC 61850) makes of the canonical field a point
feeds: one the device type has, fed by one point only, with a valid enum map where the field
takes one."""

from __future__ import annotations

from collections.abc import Mapping

from derim.adapters.yaml_model import Loc, RuleError
from derim.models.common import DeviceType
from derim.models.telemetry import (
    ENUM_FIELDS,
    METADATA_FIELDS,
    TELEMETRY_BY_DEVICE_TYPE,
    telemetry_fields,
)


def fed_field_kind(
    device_type: DeviceType,
    loc: Loc,
    field: str | None,
    enum: Mapping[int, str] | None,
    fed: set[str],
) -> type | None:
    """The Python type of the free field a point feeds, for the caller to match against the
    point's data type; None when there is nothing left to check (no field, or an enum field
    whose map is valid). Raises ``RuleError`` naming ``loc`` otherwise, and adds the field to
    ``fed``."""
    if field is None:
        if enum is not None:
            raise RuleError((*loc, "enum"), "an enum map needs a state field")
        return None
    cls = TELEMETRY_BY_DEVICE_TYPE[device_type]
    allowed = [name for name in cls.model_fields if name not in METADATA_FIELDS]
    where = (*loc, "field")
    if field not in allowed:
        raise RuleError(where, f"{field!r} is not a {cls.__name__} field: {allowed}")
    if field in fed:
        raise RuleError(where, f"field {field!r} is fed by two points")
    fed.add(field)
    enum_cls = ENUM_FIELDS.get(field)
    if enum_cls is not None:
        if enum is None:
            raise RuleError(where, f"{field!r} needs an enum map")
        values = {member.value for member in enum_cls}
        for raw, value in enum.items():
            if value not in values:
                raise RuleError((*loc, "enum", raw), f"{value!r} is not in {sorted(values)}")
        return None
    if enum is not None:
        raise RuleError((*loc, "enum"), f"{field!r} does not take an enum map")
    return telemetry_fields()[field]
