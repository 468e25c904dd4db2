"""MQTT mapping validation and topic routing: shipped mappings load, bad ones name path and line."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from derim.adapters.mqtt.mapping import (
    JsonRoute,
    MetricsRoute,
    NumberRoute,
    load_mapping,
    load_mapping_text,
    route_for,
    shipped_mapping,
    topic_matches,
)
from derim.errors import ConfigError
from derim.models.common import DeviceType

BASE = """\
name: test_map
device_type: meter
routes:
  - topic: "site/+/meter/+/telemetry"
    device_id: "meter-{3}"
    format: json
    fields:
      power_kw: {path: P, unit: W}
      state: {path: st, enum: {"0": "off", 1: "on"}}
  - topic: "plain/+/power"
    device_id: "{1}"
    format: number
    field: power_kw
    unit: W
  - topic: "bess/#"
    device_id: "{0}"
    device_type: battery
    format: metrics
    metrics: {SOC: {field: soc_percent}}
commands:
  topic: "site/{device_id}/cmd"
"""


def line_of(text: str, fragment: str) -> int:
    """1-based line of the last line of ``text`` containing ``fragment``."""
    return max(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def config_error(old: str, new: str) -> tuple[str, str]:
    """The ``ConfigError`` message for BASE with ``old`` replaced by ``new``, and that text."""
    assert old in BASE
    text = BASE.replace(old, new, 1)
    with pytest.raises(ConfigError) as info:
        load_mapping_text(text, "bad.yaml")
    return str(info.value), text


@pytest.mark.parametrize("name", ["gateway_json", "sparkplug_metrics"])
def test_shipped_mappings_load_from_package_data(name: str, tmp_path: Path) -> None:
    """Both shipped mappings are package data and load the same from their path."""
    path = Path(str(files("derim.adapters.mqtt").joinpath("mappings", f"{name}.yaml")))
    assert load_mapping(path) == shipped_mapping(name)
    assert shipped_mapping(name).name == name


def test_shipped_gateway_routes_single_and_batched_meter_readings() -> None:
    """gateway_json routes telemetry and batch topics of a meter with the same eight fields."""
    mapping = shipped_mapping("gateway_json")
    single = route_for(mapping, "site/s1/meter/m7/telemetry")
    batch = route_for(mapping, "site/s1/meter/m7/batch")
    assert isinstance(single, JsonRoute)
    assert isinstance(batch, JsonRoute)
    assert (single.readings, batch.readings) == (None, "data")
    assert [t.field for t in single.targets] == [t.field for t in batch.targets]
    assert len(single.targets) == 8


def test_shipped_sparkplug_routes_birth_and_data_of_pv_inverters() -> None:
    """sparkplug_metrics maps DBIRTH and DDATA metrics of solar inverters, state by enum."""
    mapping = shipped_mapping("sparkplug_metrics")
    for kind in ("DBIRTH", "DDATA"):
        route = route_for(mapping, f"spBv1.0/plant/{kind}/node1/inv1")
        assert isinstance(route, MetricsRoute)
        assert route.device_type is DeviceType.SOLAR_PV
        assert route.targets["Status/Operating State"].enum == {
            "1": "off",
            "2": "sleeping",
            "3": "starting",
            "4": "on",
            "5": "throttled",
            "6": "shutting_down",
            "7": "fault",
            "8": "standby",
        }


def test_unknown_shipped_mapping_and_unreadable_file_are_config_errors(tmp_path: Path) -> None:
    """An unknown shipped name and a missing file raise ConfigError naming them."""
    with pytest.raises(ConfigError, match="no shipped MQTT mapping named 'nope'"):
        shipped_mapping("nope")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"cannot read MQTT mapping .*missing\.yaml"):
        load_mapping(missing)


def test_load_mapping_names_the_file(tmp_path: Path) -> None:
    """Problems in a mapping file are reported with the file's path."""
    path = tmp_path / "site.yaml"
    path.write_text(BASE.replace("unit: W}", "unit: furlong}"), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{path}: invalid MQTT mapping: routes.0.fields"):
        load_mapping(path)


def test_routes_inherit_the_device_type_unless_they_name_one() -> None:
    """Routes without device_type take the mapping's; a route naming one keeps it."""
    mapping = load_mapping_text(BASE)
    assert [route.device_type for route in mapping.routes] == [
        DeviceType.METER,
        DeviceType.METER,
        DeviceType.BATTERY,
    ]
    assert mapping.commands is not None
    assert (mapping.commands.timeout_s, mapping.commands.qos) == (5.0, 1)


def test_units_compile_to_exact_conversions() -> None:
    """W divides by 1000, MW multiplies by 1000, scale and offset act in the mapped unit."""
    text = BASE.replace(
        "      power_kw: {path: P, unit: W}",
        "      power_kw: {path: P, unit: W}\n"
        "      energy_import_kwh: {path: E, unit: MWh}\n"
        "      voltage_v: {path: U, unit: kV, scale: 0.1, offset: -2}",
    )
    route = load_mapping_text(text).routes[0]
    assert isinstance(route, JsonRoute)
    power, energy, voltage, _ = route.targets
    assert (power.multiplier, power.divisor, power.shift) == (1.0, 1000.0, 0.0)
    assert (energy.multiplier, energy.divisor) == (1000.0, 1.0)
    assert (voltage.multiplier, voltage.divisor, voltage.shift) == (100.0, 1.0, -2000.0)
    assert (voltage.low, voltage.keys) == (0.0, ("U",))


ROUTE_1 = 'topic: "plain/+/power"'
"""Where the second route starts: the line of errors about the route as a whole."""


@pytest.mark.parametrize(
    ("old", "new", "where", "message", "at"),
    [
        (
            "power_kw: {path: P, unit: W}",
            "powr_kw: {path: P, unit: W}",
            "routes.0.fields.powr_kw",
            "'powr_kw' is not a MeterTelemetry field",
            None,
        ),
        (
            "power_kw: {path: P, unit: W}",
            "voltage_v: {path: P, unit: W}",
            "routes.0.fields.voltage_v.unit",
            "'W' does not convert to V, the unit of 'voltage_v': use one of ['mV', 'V', 'kV']",
            None,
        ),
        (
            "{path: P, unit: W}",
            "{path: P, unit: furlong}",
            "routes.0.fields.power_kw.unit",
            "'furlong' does not convert to kW",
            None,
        ),
        (
            "power_kw: {path: P, unit: W}",
            "power_factor: {path: P, unit: '%'}",
            "routes.0.fields.power_factor.unit",
            "'power_factor' is dimensionless: leave unit out",
            None,
        ),
        (
            "{path: P, unit: W}",
            "{path: P, enum: {1: 'on'}}",
            "routes.0.fields.power_kw.enum",
            "'power_kw' does not take an enum map",
            None,
        ),
        (
            '{path: st, enum: {"0": "off", 1: "on"}}',
            "{path: st}",
            "routes.0.fields.state",
            "'state' needs an enum map",
            None,
        ),
        (
            '{path: st, enum: {"0": "off", 1: "on"}}',
            '{path: st, unit: W, enum: {"0": "off"}}',
            "routes.0.fields.state",
            "'state' takes no unit, scale or offset",
            None,
        ),
        ('1: "on"}', '1: "onn"}', "routes.0.fields.state.enum.1", "'onn' is not in [", None),
        ('1: "on"}', "1: on}", "routes.0.fields.state.enum", "quote them", None),
        (
            "{path: P, unit: W}",
            "{path: 'a..b'}",
            "routes.0.fields.power_kw.path",
            "not a path",
            None,
        ),
        (
            "{path: P, unit: W}",
            "{path: 'a[x]'}",
            "routes.0.fields.power_kw.path",
            "not a path",
            None,
        ),
        (
            "{path: P, unit: W}",
            "{path: P, scale: 0}",
            "routes.0.fields.power_kw.scale",
            "must not be 0",
            None,
        ),
        ('"site/+/meter/+/telemetry"', '"site/#/x"', "routes.0.topic", "'#' must be a whole", None),
        ('"site/+/meter/+/telemetry"', '"site/m#"', "routes.0.topic", "'#' must be a whole", None),
        (
            '"site/+/meter/+/telemetry"',
            '"site/+x/m"',
            "routes.0.topic",
            "'+' must be a whole",
            None,
        ),
        ('"site/+/meter/+/telemetry"', '""', "routes.0.topic", "1 to 65535 bytes", None),
        ('"site/+/meter/+/telemetry"', '"$share/g/s/+"', "routes.0.topic", "by the adapter", None),
        ('"meter-{3}"', '"meter-{5}"', "routes.0.device_id", "{5} must name a level of", None),
        ('"{0}"', '"{1}"', "routes.2.device_id", "{1} must name a level of 'bess/#'", None),
        ('"meter-{3}"', '"meter {3}"', "routes.0.device_id", "not a device id template", None),
        ('"meter-{3}"', '"meter-{x}"', "routes.0.device_id", "not a device id template", None),
        ('"meter-{3}"', '"-meter"', "routes.0.device_id", "must start with a letter", None),
        ("    field: power_kw\n", "", "routes.1.field", "Field required", ROUTE_1),
        (
            "    format: json",
            "    format: json\n    field: voltage_v",
            "routes.0.field",
            "Extra",
            None,
        ),
        (
            "    field: power_kw",
            "    field: power_kw\n    fields: {}",
            "routes.1.fields",
            "Extra",
            None,
        ),
        ("metrics: {SOC", "fields: {SOC", "routes.2.fields", "Extra inputs", None),
        ("    format: number", "    format: xml", "routes.1", "Input tag 'xml'", ROUTE_1),
        ("    format: number\n", "", "routes.1", "Unable to extract tag", ROUTE_1),
        (
            "{field: soc_percent}",
            "{field: power_factor}",
            "routes.2.metrics.SOC.field",
            "Batt",
            None,
        ),
        ("    field: power_kw", "    field: transaction_id", "routes.1.field", "not a Meter", None),
        (
            "    field: power_kw",
            "    field: power_kw\n    enum: {1: 'on'}",
            "routes.1.enum",
            "take",
            None,
        ),
        (
            "device_type: battery",
            "device_type: solar_pv",
            "routes.2.metrics.SOC.field",
            "SolarT",
            "SOC",
        ),
        ('"plain/+/power"', '"site/+/meter/+/telemetry"', "routes.1.topic", "routed twice", None),
        ('"site/{device_id}/cmd"', '"site/+/cmd"', "commands.topic", "no wildcards", None),
        (
            '"site/{device_id}/cmd"',
            '"site/cmd"',
            "commands.topic",
            "must contain {device_id}",
            None,
        ),
        (
            '  topic: "site/{',
            '  qos: 3\n  topic: "site/{',
            "commands.qos",
            "Input should be",
            "qos",
        ),
        ("name: test_map", "name: Test Map", "name", "String should match pattern", None),
        ("name: test_map", "name: test_map\nextra: 1", "extra", "Extra inputs are not", None),
    ],
)
def test_invalid_mappings_name_the_path_and_line(
    old: str, new: str, where: str, message: str, at: str | None
) -> None:
    """Each invalid mapping names the file, the field path, the YAML line and the problem.

    The line is that of ``at``, or else of the last line of the replacement ``new``.
    """
    error, text = config_error(old, new)
    assert error.startswith("bad.yaml: invalid MQTT mapping: ")
    line = line_of(text, at or new.splitlines()[-1].strip())
    assert f"{where} (line {line}): " in error
    assert message in error


def test_invalid_yaml_names_the_line() -> None:
    """A YAML syntax error is a ConfigError with its line."""
    with pytest.raises(ConfigError, match=r"^bad.yaml: invalid YAML at line 2: "):
        load_mapping_text("name: x\nroutes: [1\n", "bad.yaml")


def test_every_problem_is_listed() -> None:
    """Two problems in one mapping are both reported."""
    error, _ = config_error('"meter-{3}"', '"meter {3}"\n    extra: 1')
    assert "routes.0.device_id (line" in error
    assert "routes.0.extra (line" in error


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("site/a/meter", "site/a/meter", True),
        ("site/a/meter", "site/a/meters", False),
        ("site/+/meter", "site/a/meter", True),
        ("site/+/meter", "site//meter", True),
        ("site/+/meter", "site/a/b/meter", False),
        ("site/+", "site", False),
        ("site/+", "site/a/b", False),
        ("site/#", "site", True),
        ("site/#", "site/a/b/c", True),
        ("site/#", "sites/a", False),
        ("#", "anything/at/all", True),
        ("+/+", "/a", True),
        ("#", "$SYS/broker/load", False),
        ("+/broker/load", "$SYS/broker/load", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("site/a", "site/a/", False),
    ],
)
def test_topic_matching_follows_mqtt_rules(topic_filter: str, topic: str, matches: bool) -> None:
    """+ matches one level (even empty), # the parent and everything below, $ topics need $."""
    assert topic_matches(topic_filter, topic) is matches


def test_route_for_takes_the_first_matching_route() -> None:
    """The first route whose filter matches wins; a topic no route matches gets None."""
    text = BASE.replace('"bess/#"', '"plain/#"')
    mapping = load_mapping_text(text)
    assert isinstance(route_for(mapping, "plain/x/power"), NumberRoute)
    assert isinstance(route_for(mapping, "plain/x/energy"), MetricsRoute)
    assert isinstance(route_for(mapping, "site/s/meter/m/telemetry"), JsonRoute)
    assert route_for(mapping, "site/s/meter/m") is None
    assert route_for(mapping, "$share/derim/plain/x/power") is None
