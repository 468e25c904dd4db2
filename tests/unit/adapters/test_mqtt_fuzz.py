"""Hypothesis fuzzing of MQTT decoding: any message gives valid readings or a PayloadError."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.mqtt.decode import PayloadError, decode
from derim.adapters.mqtt.mapping import (
    JsonRoute,
    Keys,
    MetricsRoute,
    NumberRoute,
    Route,
    Target,
    load_mapping_text,
    shipped_mapping,
    topic_matches,
)
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE

FUZZ = settings(max_examples=300, deadline=None)
MAPPING = load_mapping_text("""\
name: fuzz
device_type: meter
routes:
  - topic: "site/+/meter/+/telemetry"
    device_id: "meter-{3}"
    format: json
    timestamp: {path: ts}
    fields:
      power_kw: {path: P, unit: W}
      reactive_power_kvar: {path: Q, unit: Mvar, scale: -0.1, offset: 3}
      voltage_v: {path: "phases[1].U", unit: mV}
      energy_import_kwh: {path: E, unit: Wh}
      power_factor: {path: pf}
      state: {path: st, enum: {0: "off", 1: "on", "RUN": "on", "true": "fault"}}
  - topic: "batch/#"
    device_id: "{0}"
    device_type: battery
    format: json
    readings: "data[0].items"
    timestamp: {path: t, format: epoch_ms}
    fields:
      soc_percent: {path: soc, unit: "%"}
      temperature_c: {path: T, unit: degC, scale: 0.1, offset: -40}
  - topic: "evse/+/+"
    device_id: "{1}:{2}"
    device_type: ev_charger
    format: json
    timestamp: {path: ts, format: iso8601}
    fields:
      connector_id: {path: c}
      transaction_id: {path: tx}
      connector_status: {path: s, enum: {A: available, 3: charging}}
  - topic: "plain/+/power"
    device_id: "{1}"
    format: number
    field: frequency_hz
    unit: Hz
    scale: 0.01
  - topic: "plain/+/state"
    device_id: "{1}"
    format: number
    field: state
    enum: {1: "on", 2: standby}
  - topic: "spb/+/DDATA/+"
    device_id: "{3}"
    device_type: solar_pv
    format: metrics
    metrics:
      P: {field: power_kw, unit: kW}
      Irr: {field: irradiance_w_m2, unit: W/m2}
      St: {field: state, enum: {4: "on"}}
""")
ROUTES: list[Route] = [
    route
    for mapping in (MAPPING, shipped_mapping("gateway_json"), shipped_mapping("sparkplug_metrics"))
    for route in mapping.routes
]
NOW = datetime.now(UTC)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` nine times in ten, else ``rare``."""
    return st.integers(0, 9).flatmap(lambda n: usual if n else rare)


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,12}", fullmatch=True)
levels = mostly(ids, st.text(st.characters(exclude_characters="/"), max_size=8))
"""Topic levels: mostly valid device ids, sometimes anything but a slash (empty included)."""
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)
"""Any JSON scalar."""
timestamps = mostly(
    st.one_of(
        st.integers(0, int(NOW.timestamp())),
        st.integers(0, int(NOW.timestamp() * 1000)),
        st.datetimes(datetime(1970, 1, 2), datetime(2024, 1, 1)).map(datetime.isoformat),
    ),
    leaves,
)
"""Mostly timestamps some format accepts: epoch s or ms, ISO 8601."""


def raw_values(target: Target) -> st.SearchStrategy[Any]:
    """Mostly raw values ``target`` accepts: numbers near its range, its enum codes, text."""
    usual: st.SearchStrategy[Any]
    if target.kind == "number":
        usual = st.floats(max(target.low, -1e6), min(target.high, 1e6))
    elif target.kind == "integer":
        usual = st.integers(0, 10)
    elif target.kind == "text":
        usual = st.text(max_size=10)
    else:
        codes = list(target.enum or {})
        usual = st.sampled_from([*codes, *(int(code) for code in codes if code.isdigit())])
    return mostly(usual, leaves)


def topic_for(draw: st.DrawFn, route: Route) -> str:
    """A topic the route's filter matches, its wildcard levels filled at random."""
    parts: list[str] = []
    for level in route.topic.split("/"):
        if level == "+":
            parts.append(draw(levels))
        elif level == "#":
            parts += draw(st.lists(levels, max_size=3))
        else:
            parts.append(level)
    return "/".join(parts)


def put(document: dict[str, Any], keys: Keys, value: object) -> None:
    """Set ``value`` at path ``keys`` in ``document``, making the objects and lists on the way."""
    node: Any = document
    for key, following in zip(keys, (*keys[1:], None), strict=True):
        if isinstance(key, int):
            node.extend([None] * (key + 1 - len(node)))
        if following is None:
            node[key] = value
        elif isinstance(key, int):
            node[key] = node[key] or ([] if isinstance(following, int) else {})
            node = node[key]
        else:
            node = node.setdefault(key, [] if isinstance(following, int) else {})


def reading_object(draw: st.DrawFn, route: JsonRoute) -> dict[str, Any]:
    """A reading object with each mapped value (and the timestamp) present or not, at random."""
    document: dict[str, Any] = {}
    for target in route.targets:
        if draw(st.booleans()):
            put(document, target.keys, draw(raw_values(target)))
    if route.timestamp_keys is not None and draw(st.booleans()):
        put(document, route.timestamp_keys, draw(timestamps))
    return document


@st.composite
def messages(draw: st.DrawFn) -> tuple[Route, str, bytes]:
    """A route, a topic it matches and a payload: random bytes, random JSON or near-valid JSON."""
    route = draw(st.sampled_from(ROUTES))
    topic = topic_for(draw, route)
    json_values = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["P", "data", "metrics", "name", "value"]), children)
        ),
        max_leaves=8,
    )
    document: object
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return route, topic, draw(st.binary(max_size=64))
    if choice == 1:
        document = draw(json_values)
    elif isinstance(route, NumberRoute):
        number = st.one_of(st.floats(), st.integers(-(10**30), 10**30), raw_values(route.target))
        return route, topic, draw(number.map(str) | st.text(max_size=8)).encode()
    elif isinstance(route, MetricsRoute):
        metric = st.sampled_from(list(route.targets.items())).flatmap(
            lambda item: st.fixed_dictionaries(
                {"name": mostly(st.just(item[0]), leaves), "value": raw_values(item[1])},
                optional={"timestamp": timestamps},
            )
        )
        entries = st.lists(mostly(metric, leaves), max_size=4)
        document = draw(
            st.fixed_dictionaries({"metrics": entries}, optional={"timestamp": timestamps})
        )
    elif route.readings_keys is None:
        document = reading_object(draw, route)
    else:
        document = {}
        batch = [reading_object(draw, route) for _ in range(draw(st.integers(0, 3)))]
        put(document, route.readings_keys, batch)
    return route, topic, orjson.dumps(document)


@FUZZ
@given(message=messages())
def test_any_message_decodes_to_valid_readings_or_raises_payload_error(
    message: tuple[Route, str, bytes],
) -> None:
    """Decoding never fails otherwise, and every reading builds its canonical telemetry record."""
    route, topic, payload = message
    assert topic_matches(route.topic, topic)
    try:
        readings = decode(route, topic, payload)
    except PayloadError:
        return
    assert readings
    for reading in readings:
        assert reading.device_type is route.device_type
        assert reading.fields
        for value in reading.fields.values():
            assert isinstance(value, str) or math.isfinite(value)
        assert reading.timestamp is None or reading.timestamp.tzinfo is UTC
        TELEMETRY_BY_DEVICE_TYPE[reading.device_type](
            device_id=reading.device_id, timestamp=reading.timestamp or NOW, **reading.fields
        )


def single_json_route(text: str) -> JsonRoute:
    """The one route of mapping ``text``, a json route."""
    [route] = load_mapping_text(text).routes
    assert isinstance(route, JsonRoute)
    return route


ROUND_TRIP = single_json_route("""\
name: round_trip
device_type: meter
routes:
  - topic: "m/+"
    device_id: "{1}"
    format: json
    timestamp: {path: "meta.time", format: iso8601}
    fields:
      power_kw: {path: P}
      reactive_power_kvar: {path: Q, unit: var}
      voltage_v: {path: "phases[2].U", unit: kV}
      current_a: {path: I, unit: mA}
      frequency_hz: {path: f, unit: Hz}
      energy_import_kwh: {path: "E.in", unit: Wh}
      energy_export_kwh: {path: "E.out", unit: MWh}
      power_factor: {path: pf}
""")
POWERS = {
    "power_kw": 0,
    "reactive_power_kvar": -3,
    "voltage_v": 3,
    "current_a": -3,
    "frequency_hz": 0,
    "energy_import_kwh": -3,
    "energy_export_kwh": 3,
    "power_factor": 0,
}
"""Power of ten from each field's mapped unit to its canonical unit."""
magnitudes = st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)
instants = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2024, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9))]),
)


@FUZZ
@given(values=st.lists(magnitudes, min_size=8, max_size=8), instant=instants)
def test_json_values_round_trip_to_the_same_canonical_values(
    values: list[float], instant: datetime
) -> None:
    """Canonical values written in each path's unit decode to themselves, the instant to UTC."""
    document: dict[str, Any] = {"meta": {"time": instant.isoformat()}}
    expected: dict[str, float] = {}
    for target, value in zip(ROUND_TRIP.targets, values, strict=True):
        canonical = min(max(value, target.low), target.high)
        expected[target.field] = canonical
        put(document, target.keys, canonical / 10.0 ** POWERS[target.field])
    [reading] = decode(ROUND_TRIP, "m/dev1", orjson.dumps(document))
    assert reading.timestamp == instant
    assert reading.timestamp is not None
    assert reading.timestamp.tzinfo is UTC
    assert reading.fields.keys() == expected.keys()
    for field, value in expected.items():
        decoded = reading.fields[field]
        assert isinstance(decoded, float)
        assert math.isclose(decoded, value, rel_tol=1e-12, abs_tol=1e-290), field
    assert reading.fields["power_kw"] == expected["power_kw"]
    assert reading.fields["power_factor"] == expected["power_factor"]
