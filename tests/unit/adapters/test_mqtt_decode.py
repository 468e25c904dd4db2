"""MQTT payload decoding: JSON, number and metrics payloads to readings, or PayloadError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from derim.adapters.mqtt.decode import PayloadError, Reading, decode
from derim.adapters.mqtt.mapping import Mapping, Route, route_for, shipped_mapping
from derim.errors import ProtocolError
from derim.models.common import DeviceType
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE

METER = {
    "topic": "site/+/meter/+/telemetry",
    "device_id": "meter-{3}",
    "format": "json",
    "timestamp": {"path": "ts"},
    "fields": {
        "power_kw": {"path": "P", "unit": "W"},
        "reactive_power_kvar": {"path": "Q", "unit": "kvar", "scale": -1},
        "voltage_v": {"path": "phases[1].U", "unit": "mV"},
        "current_a": {"path": "I", "unit": "A"},
        "frequency_hz": {"path": "f", "unit": "Hz"},
        "energy_import_kwh": {"path": "E", "unit": "Wh"},
        "power_factor": {"path": "pf"},
        "state": {"path": "st", "enum": {"0": "off", "1": "on", "RUN": "on", "true": "on"}},
    },
}
"""A meter route using every JSON feature but batches."""
METER_TOPIC = "site/s1/meter/m7/telemetry"
NOON = datetime(2024, 5, 1, 12, tzinfo=UTC)
NOON_S = 1714564800


def route(spec: dict[str, Any], device_type: str = "meter") -> Route:
    """The single route of a mapping made of ``spec``."""
    data = {"name": "test", "device_type": device_type, "routes": [spec]}
    return Mapping.model_validate(data).routes[0]


def meter(payload: dict[str, Any], topic: str = METER_TOPIC) -> list[Reading]:
    """``payload`` as JSON, decoded through the METER route."""
    return decode(route(METER), topic, orjson.dumps(payload))


def error(spec: dict[str, Any], topic: str, payload: bytes, device_type: str = "meter") -> str:
    """The message of the ``PayloadError`` raised decoding ``payload``."""
    with pytest.raises(PayloadError) as info:
        decode(route(spec, device_type), topic, payload)
    assert isinstance(info.value, ProtocolError)
    return str(info.value)


def test_json_reading_converts_to_canonical_units() -> None:
    """W, mV and Wh are divided by 1000, scale -1 flips the sign, nested paths are followed."""
    payload = {
        "ts": "2024-05-01T12:00:00Z",
        "P": 1520,
        "Q": 0.5,
        "phases": [{"U": 1}, {"U": 231200}],
        "I": 6.6,
        "f": 50,
        "E": 1234567,
        "pf": -0.99,
        "st": 1,
        "extra": "ignored",
    }
    assert meter(payload) == [
        Reading(
            device_id="meter-m7",
            device_type=DeviceType.METER,
            timestamp=NOON,
            fields={
                "power_kw": 1.52,
                "reactive_power_kvar": -0.5,
                "voltage_v": 231.2,
                "current_a": 6.6,
                "frequency_hz": 50.0,
                "energy_import_kwh": 1234.567,
                "power_factor": -0.99,
                "state": "on",
            },
        )
    ]


def test_absent_and_null_values_are_not_set() -> None:
    """A missing path, a null and a path through a scalar leave their fields out, no error."""
    [reading] = meter({"P": 1000, "I": None, "phases": 5, "pf": 1})
    assert reading.fields == {"power_kw": 1.0, "power_factor": 1.0}
    assert reading.timestamp is None


def test_readings_validate_as_the_route_telemetry_class() -> None:
    """A decoded reading builds the route's canonical telemetry record as is."""
    [reading] = meter({"ts": NOON_S, "P": -250, "E": 5, "st": "RUN"})
    record = TELEMETRY_BY_DEVICE_TYPE[reading.device_type](
        device_id=reading.device_id, timestamp=reading.timestamp, **reading.fields
    )
    assert record.model_dump(exclude_none=True) == {
        "device_id": "meter-m7",
        "timestamp": NOON,
        "power_kw": -0.25,
        "energy_import_kwh": 0.005,
        "state": "on",
        "quality": "good",
    }


def test_scale_and_offset_act_in_the_mapped_unit() -> None:
    """(raw * scale + offset) is in the mapped unit, then converted: 650 * 0.1 - 40 degC is 25."""
    temperature = {
        "topic": "bess/+/temp",
        "device_id": "{1}",
        "format": "number",
        "field": "temperature_c",
        "unit": "degC",
        "scale": 0.1,
        "offset": -40,
    }
    [reading] = decode(route(temperature, "battery"), "bess/b1/temp", b"650")
    assert reading == Reading("b1", DeviceType.BATTERY, None, {"temperature_c": 25.0})
    power = {
        "topic": "p/+",
        "device_id": "{1}",
        "format": "number",
        "field": "power_kw",
        "unit": "W",
        "offset": 500,
    }
    assert decode(route(power), "p/m", b"1000")[0].fields == {"power_kw": 1.5}
    assert decode(route(power | {"scale": 0.1}), "p/m", b"453")[0].fields == {"power_kw": 0.5453}


@pytest.mark.parametrize(
    ("form", "raw", "expected"),
    [
        ("auto", "2024-05-01T12:00:00Z", NOON),
        ("auto", "2024-05-01T14:00:00+02:00", NOON),
        ("auto", "2024-05-01T12:00:00", NOON),
        ("auto", NOON_S, NOON),
        ("auto", NOON_S * 1000, NOON),
        ("auto", NOON_S + 0.5, NOON + timedelta(seconds=0.5)),
        ("epoch_s", NOON_S, NOON),
        ("epoch_ms", NOON_S * 1000 + 123, NOON + timedelta(milliseconds=123)),
        ("epoch_ms", 0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("iso8601", "2024-05-01 12:00:00.250+00:00", NOON + timedelta(milliseconds=250)),
    ],
)
def test_timestamps_in_every_format_read_as_utc(form: str, raw: object, expected: datetime) -> None:
    """ISO 8601 (offset or naive UTC), epoch s and ms, and auto all give the same UTC instant."""
    spec = METER | {"timestamp": {"path": "t", "format": form}}
    [reading] = decode(route(spec), METER_TOPIC, orjson.dumps({"t": raw, "P": 1}))
    assert reading.timestamp == expected
    assert reading.timestamp is not None
    assert reading.timestamp.tzinfo is UTC


def test_a_timestamp_within_a_day_ahead_is_accepted() -> None:
    """Clock skew of an hour ahead is tolerated."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    [reading] = meter({"ts": ahead.isoformat(), "P": 1})
    assert reading.timestamp == ahead


@pytest.mark.parametrize(
    ("form", "raw", "message"),
    [
        ("iso8601", NOON_S, "is not an ISO 8601 string"),
        ("epoch_s", "2024-05-01T12:00:00Z", "is not a number of seconds since 1970"),
        ("epoch_ms", True, "is not a number of milliseconds since 1970"),
        ("auto", [NOON_S], "is not an ISO 8601 string or a number since 1970"),
        ("auto", "yesterday", "'yesterday' is not ISO 8601"),
        ("auto", "2024-13-01T00:00:00Z", "is not ISO 8601"),
        ("auto", "0001-01-01T00:00:00+01:00", "is not ISO 8601"),
        ("auto", -1, "is before 1970 or more than 86400 s ahead"),
        ("auto", "1969-12-31T23:59:59Z", "is before 1970"),
        ("epoch_s", 1e300, "is before 1970 or more than 86400 s ahead"),
    ],
)
def test_bad_timestamps_are_payload_errors(form: str, raw: object, message: str) -> None:
    """Timestamps of the wrong type, unparsable or before 1970 are rejected, saying why."""
    spec = METER | {"timestamp": {"path": "t", "format": form}}
    assert message in error(spec, METER_TOPIC, orjson.dumps({"t": raw, "P": 1}))


def test_a_timestamp_over_a_day_ahead_is_rejected() -> None:
    """A timestamp more than a day in the future (a wrong device clock) is rejected."""
    ahead = (datetime.now(UTC) + timedelta(days=1, hours=1)).timestamp()
    payload = orjson.dumps({"ts": ahead, "P": 1})
    assert "more than 86400 s ahead" in error(METER, METER_TOPIC, payload)


BATCH = {
    "topic": "site/+/batch",
    "device_id": "{1}",
    "format": "json",
    "readings": "data.items",
    "timestamp": {"path": "t", "format": "epoch_s"},
    "fields": {"power_kw": {"path": "P", "unit": "kW"}, "voltage_v": {"path": "U"}},
}


def test_a_batch_gives_one_reading_per_object_in_order() -> None:
    """Each object of the list at ``readings`` is a reading with its own timestamp and fields."""
    items = [{"t": NOON_S, "P": 1.5, "U": 230}, {"t": NOON_S + 60, "P": 2}, {"U": 231}]
    readings = decode(route(BATCH), "site/m1/batch", orjson.dumps({"data": {"items": items}}))
    assert [(r.timestamp, r.fields) for r in readings] == [
        (NOON, {"power_kw": 1.5, "voltage_v": 230.0}),
        (NOON + timedelta(minutes=1), {"power_kw": 2.0}),
        (None, {"voltage_v": 231.0}),
    ]
    assert {r.device_id for r in readings} == {"m1"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"data": {"items": []}}, "empty batch at path 'data.items'"),
        ({"data": {}}, "no list of readings at path 'data.items'"),
        ({"data": {"items": {"P": 1}}}, "no list of readings"),
        ({"data": {"items": [{"P": 1}, 7]}}, "reading 1 is 7, not a JSON object"),
        ({"data": {"items": [{"P": 1}, {"Q": 1}]}}, "reading 1 has none of the mapped values"),
    ],
)
def test_bad_batches_are_payload_errors(payload: object, message: str) -> None:
    """An empty or missing batch, a non-object or an empty reading in it is rejected."""
    assert message in error(BATCH, "site/m1/batch", orjson.dumps(payload))


@pytest.mark.parametrize(("code", "state"), [(0, "off"), (1, "on"), (1.0, "on"), ("RUN", "on")])
def test_enum_codes_map_to_canonical_states(code: object, state: str) -> None:
    """Integer, integral float and string codes are looked up as text."""
    assert meter({"st": code})[0].fields == {"state": state}


def test_json_true_is_enum_code_true() -> None:
    """A JSON boolean is looked up as "true" or "false"."""
    assert meter({"st": True})[0].fields == {"state": "on"}


@pytest.mark.parametrize("code", [7, "STOP", 1.5, False, {"code": 1}])
def test_unmapped_enum_codes_are_payload_errors(code: object) -> None:
    """A code missing from the enum map is rejected, naming the code."""
    message = error(METER, METER_TOPIC, orjson.dumps({"st": code}))
    assert message.startswith("path 'st': unmapped enum code")


NUMBER = {
    "topic": "plain/+/power",
    "device_id": "meter-{1}",
    "format": "number",
    "field": "power_kw",
    "unit": "W",
}


@pytest.mark.parametrize(
    ("payload", "power"),
    [(b"1520", 1.52), (b" 1520.5\r\n", 1.5205), (b"-3e2", -0.3), (b"+.5", 0.0005), (b"7.", 0.007)],
)
def test_plain_numbers_decode(payload: bytes, power: float) -> None:
    """A plain decimal number, signs, exponents and surrounding whitespace allowed, is one value."""
    assert decode(route(NUMBER), "plain/a/power", payload) == [
        Reading("meter-a", DeviceType.METER, None, {"power_kw": power})
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"abc", "payload b'abc' is not a decimal number"),
        (b"", "is not a decimal number"),
        (b"nan", "is not a decimal number"),
        (b"inf", "is not a decimal number"),
        (b"1_000", "is not a decimal number"),
        (b"0x10", "is not a decimal number"),
        (b"1 2", "is not a decimal number"),
        ("١٢".encode(), "is not a decimal number"),
        (b"\xff1", "payload is not UTF-8"),
        (b"1e999", "gives inf, not a finite number"),
    ],
)
def test_bad_plain_numbers_are_payload_errors(payload: bytes, message: str) -> None:
    """Anything but an ASCII decimal number, and numbers too large for a float, are rejected."""
    assert message in error(NUMBER, "plain/a/power", payload)


def test_a_number_route_feeds_an_enum_field() -> None:
    """A plain number can be an enum code."""
    spec = NUMBER | {"field": "state", "unit": None, "enum": {"3": "fault"}}
    assert decode(route(spec), "plain/a/power", b"3\n")[0].fields == {"state": "fault"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff{}", "payload is not UTF-8"),
        (b'{"P": 1', "payload is not JSON"),
        (b'{"P": NaN}', "payload is not JSON"),
        (b'{"P": Infinity}', "payload is not JSON"),
        (b"[1, 2]", "payload is [1, 2], not a JSON object"),
        (b'{"P": "12"}', "path 'P': '12' is not a number"),
        (b'{"P": true}', "path 'P': True is not a number"),
        (b'{"P": [1]}', "path 'P': [1] is not a number"),
        (b'{"X": 1}', "payload has none of the mapped values: path 'P', path 'Q'"),
        (b"{}", "payload has none of the mapped values"),
        (b'{"phases": [0, {"U": -1}]}', "path 'phases[1].U': voltage_v -0.001 is outside 0.0"),
        (b'{"pf": 1.01}', "path 'pf': power_factor 1.01 is outside -1.0 to 1.0"),
    ],
)
def test_bad_json_payloads_are_payload_errors(payload: bytes, message: str) -> None:
    """Undecodable payloads, non-numbers, out-of-range values and empty readings are rejected."""
    assert message in error(METER, METER_TOPIC, payload)


def test_a_value_overflowing_its_conversion_is_rejected() -> None:
    """A finite raw value whose canonical value overflows to infinity is rejected."""
    spec = NUMBER | {"unit": "MW"}
    assert "not a finite number" in error(spec, "plain/a/power", b"1e306")


@pytest.mark.parametrize(
    ("topic", "device_id"),
    [
        ("site/s/meter/m.1:a@b_c-d/telemetry", "meter-m.1:a@b_c-d"),
        (f"site/s/meter/{'x' * 122}/telemetry", "meter-" + "x" * 122),
    ],
)
def test_device_ids_come_from_topic_levels(topic: str, device_id: str) -> None:
    """The template's {n} takes topic level n; the id may be 128 characters long."""
    assert meter({"P": 1}, topic)[0].device_id == device_id


@pytest.mark.parametrize(
    ("spec_id", "topic"),
    [
        ("{3}", "site/s/meter//telemetry"),
        ("{3}", "site/s/meter/-x/telemetry"),
        ("meter-{3}", "site/s/meter/a b/telemetry"),
        ("meter-{3}", "site/s/meter/ä/telemetry"),
        ("meter-{3}", f"site/s/meter/{'x' * 123}/telemetry"),
        ("meter-{3}", "site/s/meter/a\n/telemetry"),
    ],
)
def test_invalid_device_ids_are_payload_errors(spec_id: str, topic: str) -> None:
    """An empty, over-long or badly spelled device id from the topic is rejected."""
    message = error(METER | {"device_id": spec_id}, topic, b'{"P": 1}')
    assert "a device id is 1 to 128 letters, digits and ._:@-" in message


def test_a_topic_with_too_few_levels_is_a_payload_error() -> None:
    """A topic the route's filter does not match cannot name a device."""
    assert "has too few levels for 'meter-{3}'" in error(METER, "site/s1", b'{"P": 1}')


EVSE = {
    "topic": "evse/+",
    "device_id": "{1}",
    "format": "json",
    "fields": {
        "connector_id": {"path": "c"},
        "transaction_id": {"path": "tx"},
        "connector_status": {"path": "s", "enum": {"A": "available", "C": "charging"}},
    },
}


def test_integer_and_text_fields_keep_their_types() -> None:
    """connector_id reads as an int, a numeric transaction id as its decimal text."""
    [reading] = decode(route(EVSE, "ev_charger"), "evse/cp1", b'{"c": 2.0, "tx": 4711, "s": "C"}')
    assert reading.fields == {
        "connector_id": 2,
        "transaction_id": "4711",
        "connector_status": "charging",
    }
    assert type(reading.fields["connector_id"]) is int


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"c": 1.5}, "path 'c': 1.5 is not an integer"),
        ({"c": -1}, "connector_id -1 is outside 0.0"),
        ({"c": "1"}, "path 'c': '1' is not a number"),
        ({"tx": "x" * 65}, "path 'tx': longer than 64 characters"),
        ({"tx": 1.5}, "path 'tx': 1.5 is not a string"),
        ({"tx": False}, "path 'tx': False is not a string"),
    ],
)
def test_bad_integer_and_text_values_are_payload_errors(payload: object, message: str) -> None:
    """Non-integral or negative connector ids and over-long or non-text transaction ids fail."""
    assert message in error(EVSE, "evse/cp1", orjson.dumps(payload), "ev_charger")


METRICS = {
    "topic": "spb/+/DDATA/+",
    "device_id": "{3}",
    "format": "metrics",
    "metrics": {
        "P": {"field": "power_kw", "unit": "W"},
        "Q": {"field": "reactive_power_kvar", "unit": "var"},
        "St": {"field": "state", "enum": {"1": "on"}},
    },
}


def metrics(payload: object) -> list[Reading]:
    """``payload`` as JSON, decoded through the METRICS route."""
    return decode(route(METRICS), "spb/g/DDATA/inv1", orjson.dumps(payload))


def test_metrics_group_into_one_reading_per_timestamp() -> None:
    """Metrics take the payload timestamp unless they carry their own; unmapped ones are ignored."""
    payload = {
        "timestamp": NOON_S * 1000,
        "seq": 4,
        "metrics": [
            {"name": "P", "value": 1200, "timestamp": NOON_S * 1000 - 500},
            {"name": "Q", "value": -300},
            {"name": "Other", "value": 1},
            {"alias": 7, "value": 1},
            {"name": "St", "value": None},
            {"name": "St", "value": 1},
        ],
    }
    assert metrics(payload) == [
        Reading("inv1", DeviceType.METER, NOON - timedelta(milliseconds=500), {"power_kw": 1.2}),
        Reading("inv1", DeviceType.METER, NOON, {"reactive_power_kvar": -0.3, "state": "on"}),
    ]


def test_metrics_without_any_timestamp_read_none() -> None:
    """Without payload or metric timestamps the reading has none (the adapter stamps arrival)."""
    [reading] = metrics({"metrics": [{"name": "P", "value": 5}]})
    assert (reading.timestamp, reading.fields) == (None, {"power_kw": 0.005})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "a metrics payload is a JSON object with a list at 'metrics'"),
        ({"metrics": {"P": 1}}, "a metrics payload is a JSON object with a list at 'metrics'"),
        ({"metrics": []}, "none of the mapped metrics is present: ['P', 'Q', 'St']"),
        ({"metrics": [{"name": "X", "value": 1}]}, "none of the mapped metrics is present"),
        ({"metrics": [{"name": "P"}]}, "none of the mapped metrics is present"),
        ({"metrics": [{"name": "P", "value": 1}, 3]}, "metrics[1] is 3, not a JSON object"),
        ({"metrics": [{"name": "P", "value": False}]}, "metric 'P': False is not a number"),
        ({"metrics": [{"name": "St", "value": 2}]}, "metric 'St': unmapped enum code 2"),
        ({"timestamp": "noon", "metrics": []}, "timestamp 'noon' is not a number of milli"),
        ({"metrics": [{"name": "P", "value": 1, "timestamp": -5}]}, "is before 1970"),
    ],
)
def test_bad_metrics_payloads_are_payload_errors(payload: object, message: str) -> None:
    """Malformed metrics payloads, entries, values and timestamps are rejected."""
    assert message in error(METRICS, "spb/g/DDATA/inv1", orjson.dumps(payload))


def test_shipped_gateway_mapping_decodes_its_documented_payloads() -> None:
    """The gateway_json header examples decode: one reading, and a batch with the site prefix."""
    mapping = shipped_mapping("gateway_json")
    topic = "site/s1/meter/m7/telemetry"
    single = route_for(mapping, topic)
    assert single is not None
    payload = (
        b'{"ts": "2024-05-01T12:00:00Z", "P": 1520.5, "Q": -120, "U": 231.2, "I": 6.61,'
        b' "f": 50.01, "pf": 0.99, "E_imp": 1234567, "E_exp": 89012}'
    )
    assert decode(single, topic, payload) == [
        Reading(
            "s1.m7",
            DeviceType.METER,
            NOON,
            {
                "power_kw": 1.5205,
                "reactive_power_kvar": -0.12,
                "voltage_v": 231.2,
                "current_a": 6.61,
                "frequency_hz": 50.01,
                "power_factor": 0.99,
                "energy_import_kwh": 1234.567,
                "energy_export_kwh": 89.012,
            },
        )
    ]
    topic = "site/s1/meter/m7/batch"
    batch = route_for(mapping, topic)
    assert batch is not None
    payload = (
        b'{"data": [{"ts": "2024-05-01T11:59:00Z", "P": 1498.0},'
        b' {"ts": "2024-05-01T12:00:00Z", "P": 1520}]}'
    )
    assert [(r.timestamp, r.fields) for r in decode(batch, topic, payload)] == [
        (NOON - timedelta(minutes=1), {"power_kw": 1.498}),
        (NOON, {"power_kw": 1.52}),
    ]


def test_shipped_sparkplug_mapping_decodes_its_documented_payload() -> None:
    """The sparkplug_metrics header example decodes into two readings of the inverter."""
    mapping = shipped_mapping("sparkplug_metrics")
    topic = "spBv1.0/plant/DDATA/node1/inv1"
    data = route_for(mapping, topic)
    assert data is not None
    payload = (
        b'{"timestamp": 1714564800000, "seq": 12, "metrics": ['
        b'{"name": "AC/Active Power", "value": 4520.5},'
        b'{"name": "Module/Temperature", "value": 453},'
        b'{"name": "Status/Operating State", "value": 4, "timestamp": 1714564799500}]}'
    )
    assert decode(data, topic, payload) == [
        Reading(
            "node1.inv1",
            DeviceType.SOLAR_PV,
            NOON,
            {"power_kw": 4.5205, "panel_temperature_c": 45.3},
        ),
        Reading(
            "node1.inv1",
            DeviceType.SOLAR_PV,
            NOON - timedelta(milliseconds=500),
            {"state": "on"},
        ),
    ]
