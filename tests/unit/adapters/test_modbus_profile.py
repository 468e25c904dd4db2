"""Device profile validation: shipped profiles load, bad profiles name the file, path and line."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from derim.adapters.modbus import (
    ControlPoint,
    Point,
    load_profile,
    load_profile_text,
    plan_reads,
    shipped_profile,
)
from derim.errors import ConfigError

BASE = """\
name: test_meter
device_type: meter
blocks:
  - register_type: input
    word_order: little
    points:
      - name: power
        address: 0
        data_type: s32
        scale: 0.001
        field: power_kw
      - name: power_sf
        address: 2
        data_type: s16
"""


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line of ``text`` containing ``fragment``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def config_error(text: str) -> str:
    """The message of the ``ConfigError`` raised for profile ``text``."""
    with pytest.raises(ConfigError) as info:
        load_profile_text(text, "bad.yaml")
    return str(info.value)


@pytest.mark.parametrize("name", ["generic_meter", "generic_battery"])
def test_shipped_profiles_load_from_package_data(name: str) -> None:
    """Both shipped profiles are package data, load from their path and plan into two reads."""
    path = Path(str(files("derim.adapters.modbus").joinpath("profiles", f"{name}.yaml")))
    profile = load_profile(path)
    assert profile == shipped_profile(name)
    assert len(plan_reads(profile.points, profile.read.max_registers, profile.read.max_gap)) == 2


def test_shipped_meter_feeds_the_meter_fields() -> None:
    """The meter profile feeds power, reactive power, V, A, Hz, both energies and power factor."""
    fields = {point.field for point in shipped_profile("generic_meter").points} - {None}
    assert fields == {
        "power_kw",
        "reactive_power_kvar",
        "voltage_v",
        "current_a",
        "frequency_hz",
        "energy_import_kwh",
        "energy_export_kwh",
        "power_factor",
    }


def test_shipped_battery_has_limited_setpoint_and_switch() -> None:
    """The battery profile has a kW setpoint with limits and an enable/disable switch."""
    controls = {c.name: c for c in shipped_profile("generic_battery").controls}
    assert (controls["active_power_setpoint"].min, controls["active_power_setpoint"].max) == (-5, 5)
    assert controls["enable"].choices == {"connect": 1, "disconnect": 0}
    assert controls["enable"].commands == ["connect", "disconnect"]
    assert controls["active_power_setpoint"].commands == ["set_active_power"]


def test_block_settings_are_point_defaults() -> None:
    """Points inherit register type and word order from their block unless they set their own."""
    text = BASE + "        word_order: big\n"
    power, power_sf = load_profile_text(text).points
    assert (power.register_type, power.word_order) == ("input", "little")
    assert (power_sf.register_type, power_sf.word_order) == ("input", "big")


def test_bad_data_type_names_file_path_and_line() -> None:
    """An unknown data type is reported with the file, the field path and its YAML line."""
    text = BASE.replace("data_type: s16", "data_type: s99")
    message = config_error(text)
    assert "bad.yaml" in message
    assert f"blocks.0.points.1.data_type (line {line_of(text, 's99')})" in message


def test_missing_key_names_the_line_where_the_item_starts() -> None:
    """A point lacking its address is reported at the line where that point starts."""
    text = BASE.replace("        address: 2\n", "")
    assert f"blocks.0.points.1.address (line {line_of(text, 'name: power_sf')})" in config_error(
        text
    )


def test_field_of_another_device_class_is_rejected() -> None:
    """A meter point cannot feed a battery field; the error names the point's field line."""
    text = BASE.replace("field: power_kw", "field: soc_percent")
    message = config_error(text)
    assert f"blocks.0.points.0.field (line {line_of(text, 'soc_percent')})" in message
    assert "not a MeterTelemetry field" in message


@pytest.mark.parametrize(
    ("old", "new", "culprit", "complaint"),
    [
        ("scale: 0.001", "scale_factor: nope", "points.0.scale_factor", "no point named 'nope'"),
        ("scale: 0.001", "scale_factor: power", "points.0.scale_factor", "'power' must be an"),
        ("name: power_sf", "name: power  # again", "points.1.name", "duplicate point name 'power'"),
    ],
)
def test_cross_field_problems_name_the_culprit(
    old: str, new: str, culprit: str, complaint: str
) -> None:
    """Dangling or bad scale-factor references and duplicate names point at the bad item's line."""
    text = BASE.replace(old, new, 1)
    message = config_error(text)
    assert f"blocks.0.{culprit} (line {line_of(text, new)}): {complaint}" in message


def test_field_fed_twice_is_rejected() -> None:
    """Two points feeding the same canonical field are rejected at the second one."""
    text = BASE + "        field: power_kw\n"
    assert "blocks.0.points.1.field" in config_error(text)
    assert "fed by two points" in config_error(text)


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ("field: state\n", "needs an enum map"),
        ("field: state\n        enum: {0: 'sideways'}\n", "'sideways' is not in"),
        ("field: frequency_hz\n        enum: {0: 'on'}\n", "does not take an enum map"),
        ("not_implemented: [0x10000]\n", "does not fit in 1 register"),
        ("scale: 0\n", "scale must not be 0"),
        ("length: 2\n", "only for strings"),
    ],
)
def test_point_rules(extra: str, complaint: str) -> None:
    """Enum maps, sentinel widths, zero scales and string lengths are checked per point."""
    text = BASE + "        " + extra
    assert complaint in config_error(text)


@pytest.mark.parametrize(
    ("control", "complaint"),
    [
        ("data_type: s16\n    min: 0\n", "needs min <= max"),
        ("data_type: s16\n    min: 5\n    max: 1\n", "needs min <= max"),
        ("data_type: s16\n    scale: 0.001\n    min: 0\n    max: 100\n", "do not fit in s16"),
        ("data_type: u16\n    choices: {go: 1}\n    max: 1\n", "not both"),
        ("data_type: string\n    length: 2\n    min: 0\n    max: 1\n", "numeric"),
        ("data_type: u16\n    register_type: input\n    min: 0\n    max: 1\n", "holding"),
    ],
)
def test_control_rules(control: str, complaint: str) -> None:
    """Control points need limits or choices that fit their type, and live in holding registers."""
    text = BASE + f"controls:\n  - name: setpoint\n    address: 9\n    {control}"
    message = config_error(text)
    assert complaint in message
    assert "controls.0" in message


def test_point_wider_than_a_request_is_rejected() -> None:
    """A string longer than read.max_registers could never be read and is refused."""
    text = BASE.replace("blocks:", "read: {max_registers: 4}\nblocks:") + (
        "      - name: serial\n        address: 10\n        data_type: string\n        length: 5\n"
    )
    assert "exceed read.max_registers" in config_error(text)


def test_invalid_yaml_names_the_line() -> None:
    """A YAML syntax error is a ConfigError naming the source and the line."""
    text = BASE + "      - name: [unclosed\n"
    message = config_error(text)
    assert f"bad.yaml: invalid YAML at line {line_of(text, 'unclosed')}:" in message


def test_non_mapping_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """An empty document and an unreadable file raise ConfigError, not a raw exception."""
    assert "(top level) (line 1)" in config_error("")
    with pytest.raises(ConfigError, match="cannot read device profile"):
        load_profile(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="no shipped device profile"):
        shipped_profile("absent")


def test_models_are_frozen() -> None:
    """Loaded profiles are immutable values."""
    point = Point(name="p", address=0, data_type="u16")
    control = ControlPoint(name="c", address=0, data_type="u16", min=0, max=1)
    with pytest.raises(ValueError, match="frozen"):
        point.address = 3  # type: ignore[misc]
    assert control.register_type == "holding"
