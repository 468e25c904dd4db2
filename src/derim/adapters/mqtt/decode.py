"""Pure MQTT payload decoding: one received message -> canonical readings; no I/O.

``decode`` applies a route of a mapping (``derim.adapters.mqtt.mapping``) to a message. It returns
at least one reading or raises ``PayloadError`` saying what is wrong; every value it returns is a
finite number within its field's limits, an enum value or a string, so each reading validates as
the route's telemetry class. A mapped value that is absent or JSON ``null`` is simply not set, as
long as the reading has at least one mapped field. Timestamps before 1970 or more than a day ahead
of this machine's clock are rejected.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from derim.adapters.mqtt.mapping import (
    JsonRoute,
    Keys,
    MetricsRoute,
    NumberRoute,
    Route,
    Target,
    TimestampFormat,
)
from derim.errors import ProtocolError
from derim.models.common import ID_PATTERN, MAX_ID_LENGTH, DeviceType, to_utc

MAX_FUTURE_S = 86_400.0
"""How far ahead of the local clock a payload timestamp may be, s (clock skew allowance)."""
MS_THRESHOLD = 1e11
"""``auto`` timestamps: epoch values above this are milliseconds (1e11 s is the year 5138)."""

DEVICE_ID_CACHE_SIZE = 100_000
"""(template, topic) pairs whose device id is remembered."""

_EXPECTED: dict[TimestampFormat, str] = {
    "iso8601": "an ISO 8601 string",
    "epoch_s": "a number of seconds since 1970",
    "epoch_ms": "a number of milliseconds since 1970",
    "auto": "an ISO 8601 string or a number since 1970",
}
_ID = re.compile(ID_PATTERN)
_NUMBER = re.compile(rb"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


class PayloadError(ProtocolError):
    """A message a route cannot decode; the message names what is wrong."""


@dataclass(slots=True)
class Reading:
    """One device's canonical values at one instant, decoded from an MQTT message."""

    device_id: str
    device_type: DeviceType
    timestamp: datetime | None
    """Aware UTC; None when the payload carries none (the adapter stamps the arrival time)."""
    fields: dict[str, float | str]
    """Canonical field -> value in its canonical unit (enum values as their string value)."""


def decode(route: Route, topic: str, payload: bytes) -> list[Reading]:
    """Decode ``payload``, received on ``topic`` (which matches ``route.topic``), into readings.

    A json route gives one reading per object (one, or each of a batch), a number route one
    reading, a metrics route one reading per distinct timestamp among the mapped metrics
    (metrics it does not map, or that carry no name, only an alias, are ignored).
    Raises ``PayloadError`` when the topic yields no valid device id or the payload is not
    UTF-8, not JSON (not a decimal number), lacks every mapped field, holds an empty batch, a
    non-number, NaN, infinity or out-of-range value, an unmapped enum code or a bad timestamp.
    """
    device_id = _device_id(route.device_id, topic)
    if isinstance(route, NumberRoute):
        if _NUMBER.fullmatch(payload) is None:
            _text(payload)
            raise PayloadError(f"payload {_show(payload)} is not a decimal number")
        value = _value(route.target, float(payload))
        return [Reading(device_id, route.device_type, None, {route.target.field: value})]
    document = _json(payload)
    if isinstance(route, JsonRoute):
        return _decode_json(route, device_id, document)
    return _decode_metrics(route, device_id, document)


def _decode_json(route: JsonRoute, device_id: str, document: object) -> list[Reading]:
    """One reading per object: the document itself, or each object of its batch."""
    batch = [document] if route.readings_keys is None else _at(document, route.readings_keys)
    if not isinstance(batch, list):
        raise PayloadError(f"no list of readings at path {route.readings!r}")
    if not batch:
        raise PayloadError(f"empty batch at path {route.readings!r}")
    readings = []
    for n, item in enumerate(batch):
        if not isinstance(item, dict):
            raise PayloadError(f"{_where(route, n)} is {_show(item)}, not a JSON object")
        fields: dict[str, float | str] = {}
        for target in route.targets:
            raw = _at(item, target.keys)
            if raw is not None:
                fields[target.field] = _value(target, raw)
        if not fields:
            paths = ", ".join(target.source for target in route.targets)
            raise PayloadError(f"{_where(route, n)} has none of the mapped values: {paths}")
        timestamp = None
        if route.timestamp is not None and route.timestamp_keys is not None:
            raw = _at(item, route.timestamp_keys)
            timestamp = _timestamp(raw, route.timestamp.format)
        readings.append(Reading(device_id, route.device_type, timestamp, fields))
    return readings


def _where(route: JsonRoute, n: int) -> str:
    """Reading ``n`` of a json route's payload, as error messages name it."""
    return "payload" if route.readings_keys is None else f"reading {n}"


def _decode_metrics(route: MetricsRoute, device_id: str, document: object) -> list[Reading]:
    """One reading per distinct timestamp (the metric's, else the payload's) of mapped metrics."""
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(metrics, list):
        raise PayloadError("a metrics payload is a JSON object with a list at 'metrics'")
    default = _timestamp(document.get("timestamp"), "epoch_ms")
    groups: dict[datetime | None, dict[str, float | str]] = {}
    for n, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            raise PayloadError(f"metrics[{n}] is {_show(metric)}, not a JSON object")
        name = metric.get("name")
        target = route.targets.get(name) if isinstance(name, str) else None
        raw = metric.get("value")
        if target is None or raw is None:
            continue
        value = _value(target, raw)
        stamp = metric.get("timestamp")
        timestamp = default if stamp is None else _timestamp(stamp, "epoch_ms")
        groups.setdefault(timestamp, {})[target.field] = value
    if not groups:
        raise PayloadError(f"none of the mapped metrics is present: {list(route.targets)}")
    return [
        Reading(device_id, route.device_type, timestamp, fields)
        for timestamp, fields in groups.items()
    ]


@functools.lru_cache(maxsize=DEVICE_ID_CACHE_SIZE)
def _device_id(template: str, topic: str) -> str:
    """The device id ``template`` names in ``topic``; raise ``PayloadError`` if it is invalid."""
    try:
        device_id = template.format(*topic.split("/"))
    except IndexError:
        raise PayloadError(f"topic {_show(topic)} has too few levels for {template!r}") from None
    if len(device_id) > MAX_ID_LENGTH or _ID.fullmatch(device_id) is None:
        raise PayloadError(
            f"topic {_show(topic)} gives device id {_show(device_id)}: a device id is 1 to "
            f"{MAX_ID_LENGTH} letters, digits and ._:@-, starting with a letter or digit"
        )
    return device_id


def _text(payload: bytes) -> str:
    """``payload`` as text; raise ``PayloadError`` if it is not UTF-8."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc}") from exc


def _json(payload: bytes) -> object:
    """The JSON document in ``payload``; raise ``PayloadError`` if it is not UTF-8 JSON."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        _text(payload)
        raise PayloadError(f"payload is not JSON: {exc}") from exc


def _at(node: object, keys: Keys) -> object:
    """The value at ``keys`` inside ``node``; None when the path does not lead anywhere."""
    for key in keys:
        if isinstance(key, str):
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        elif isinstance(node, list) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def _value(target: Target, raw: object) -> float | str:
    """The canonical value of ``raw`` for ``target``; raise ``PayloadError`` if it has none."""
    kind = target.kind
    if kind == "enum":
        value = None if target.enum is None else target.enum.get(_code(raw))
        if value is None:
            raise PayloadError(f"{target.source}: unmapped enum code {_show(raw)}")
        return value
    if kind == "text":
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise PayloadError(f"{target.source}: {_show(raw)} is not a string")
        if target.max_length is not None and len(raw) > target.max_length:
            raise PayloadError(f"{target.source}: longer than {target.max_length} characters")
        return raw
    if type(raw) is not float and type(raw) is not int:  # bool is neither
        raise PayloadError(f"{target.source}: {_show(raw)} is not a number")
    number: float
    if kind == "integer":
        if isinstance(raw, float) and not raw.is_integer():
            raise PayloadError(f"{target.source}: {_show(raw)} is not an integer")
        number = int(raw)
    else:
        number = raw * target.multiplier / target.divisor + target.shift
        if not math.isfinite(number):
            raise PayloadError(f"{target.source}: {_show(raw)} gives {number}, not a finite number")
    if not target.low <= number <= target.high:
        raise PayloadError(
            f"{target.source}: {target.field} {number} is outside {target.low} to {target.high}"
        )
    return number


def _code(raw: object) -> str:
    """The text form of enum code ``raw``: a string as is, integers in decimal, JSON booleans."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return raw if isinstance(raw, str) else str(raw)


def _timestamp(raw: object, form: TimestampFormat) -> datetime | None:
    """The UTC instant ``raw`` stands for, None if it is None; raise ``PayloadError`` if invalid."""
    if raw is None:
        return None
    if isinstance(raw, str) and form in ("iso8601", "auto"):
        try:
            instant = to_utc(datetime.fromisoformat(raw))
            seconds = instant.timestamp()
        except (ValueError, OverflowError) as exc:
            raise PayloadError(f"timestamp {_show(raw)} is not ISO 8601: {exc}") from exc
    elif isinstance(raw, int | float) and not isinstance(raw, bool) and form != "iso8601":
        milliseconds = form == "epoch_ms" or (form == "auto" and raw > MS_THRESHOLD)
        seconds = raw / 1000 if milliseconds else raw
        instant = None
    else:
        raise PayloadError(f"timestamp {_show(raw)} is not {_EXPECTED[form]}")
    if not 0 <= seconds <= time.time() + MAX_FUTURE_S:
        raise PayloadError(
            f"timestamp {_show(raw)} is before 1970 or more than {MAX_FUTURE_S:.0f} s ahead"
        )
    return instant if instant is not None else datetime.fromtimestamp(seconds, UTC)


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
