"""IEC 61850 profile validation: the shipped profile loads; bad profiles name the fault."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from derim.adapters.iec61850 import load_profile, load_profile_text, shipped_profile
from derim.errors import ConfigError

BASE = """\
name: test_battery
device_type: battery
points:
  - name: power
    ref: DER/MMXU1.TotW.mag.f
    fc: MX
    type: float
    scale: 0.001
    field: power_kw
controls:
  - name: limit
    ref: DER/DRCC1.WMaxSpt.setVal
    type: int
    scale: 0.001
    unit: kW
    min: 0
    max: 10
    commands: [set_power_limit]
"""


def config_error(text: str) -> str:
    """The message of the ``ConfigError`` raised for profile ``text``."""
    with pytest.raises(ConfigError) as info:
        load_profile_text(text, "bad.yaml")
    return str(info.value)


def test_shipped_profile_loads_from_package_data() -> None:
    """The generic DER battery profile is package data and maps MMXU, ZBAT and LLN0 points."""
    path = files("derim.adapters.iec61850").joinpath("profiles", "generic_der_battery.yaml")
    profile = load_profile(Path(str(path)))
    assert profile == shipped_profile("generic_der_battery")
    fields = {point.field for point in profile.points}
    assert {"power_kw", "soc_percent", "state", "frequency_hz"} <= fields
    assert [c.name for c in profile.controls] == [
        "max_power_setpoint",
        "active_power_setpoint",
        "enable",
    ]


def test_unknown_shipped_profile_is_a_config_error() -> None:
    """Asking for a profile DERIM does not ship names it."""
    with pytest.raises(ConfigError, match="no_such"):
        shipped_profile("no_such")


def test_base_profile_is_valid() -> None:
    """The profile the other cases break is itself valid."""
    assert load_profile_text(BASE).points[0].ref == "DER/MMXU1.TotW.mag.f"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("ref: DER/MMXU1.TotW.mag.f", "ref: MMXU1.TotW", "points.0.ref (line 5)"),
        ("ref: DER/MMXU1.TotW.mag.f", "ref: DER/MMXU1.TotW", "points.0.ref (line 5)"),
        ("fc: MX", "fc: XX", "points.0.fc (line 6)"),
        ("type: float\n", "type: double\n", "points.0.type (line 7)"),
        ("field: power_kw", "field: soh_kw", "'soh_kw' is not a BatteryTelemetry field"),
        ("scale: 0.001\n    field", "scale: 0\n    field", "scale must not be 0"),
        ("max: 10", "max: -1", "a numeric setpoint needs min <= max"),
        ("max: 10", "max: 1e12", "does not fit in a int setpoint"),
        ("[set_power_limit]", "[set_the_moon]", "controls.0.commands.0 (line 18)"),
        ("name: limit", "name: power", "duplicate point name 'power'"),
        ("name: limit", "name: Limit", "controls.0.name (line 11)"),
        ("WMaxSpt.setVal", "WMaxSpt", "a write setpoint's ref names an attribute"),
        ("type: int\n", "type: int\n    service: operate\n", "read_back is required"),
        ("type: int\n", "type: int\n    read_back: DER/X1.Y.z\n", "read_back is required"),
        ("max: 10", "max: 10\n    tolerance: -0.1", "controls.0.tolerance (line 18)"),
    ],
)
def test_bad_profile_names_the_fault(old: str, new: str, expected: str) -> None:
    """Each broken field is reported with its path or rule, and the file name."""
    assert old in BASE
    message = config_error(BASE.replace(old, new, 1))
    assert message.startswith("bad.yaml: invalid IEC 61850 profile")
    assert expected in message


def test_enum_point_must_feed_a_state_with_known_values() -> None:
    """An enum map must go with the state field and name real operating states."""
    text = BASE.replace(
        "    field: power_kw\n",
        "    field: power_kw\n  - name: beh\n    ref: DER/LLN0.Beh.stVal\n    fc: ST\n"
        "    type: int\n    field: state\n    enum: {1: 'on', 5: exploded}\n",
    )
    assert "points.1.enum.5" in config_error(text)
    assert "'exploded' is not in" in config_error(text)


def test_scaled_enum_is_refused() -> None:
    """An enum point takes its ordinal as is: no scale."""
    text = BASE.replace(
        "    field: power_kw\n",
        "    field: power_kw\n  - name: beh\n    ref: DER/LLN0.Beh.stVal\n    fc: ST\n"
        "    type: int\n    scale: 2\n    field: state\n    enum: {1: 'on'}\n",
    )
    assert "an enum point must be an unscaled int" in config_error(text)


def test_bool_setpoint_needs_bool_choices() -> None:
    """A bool setpoint takes choices of true/false, not numbers or limits."""
    bool_control = (
        "  - name: enable\n    ref: DER/DRCC1.DEREna.setVal\n    type: bool\n"
        "    choices: {connect: 1, disconnect: 0}\n"
    )
    assert "choice 'connect' must be a value of a bool setpoint" in config_error(
        BASE + bool_control
    )
    limited = "  - name: enable\n    ref: DER/DRCC1.DEREna.setVal\n    type: bool\n"
    assert "a bool setpoint needs choices" in config_error(BASE + limited)


def test_setpoint_tolerance_is_read_for_numbers_only() -> None:
    """A numeric setpoint keeps its tolerance (in its unit); a choice setpoint takes none."""
    profile = load_profile_text(BASE.replace("max: 10", "max: 10\n    tolerance: 0.005"))
    assert profile.controls[0].tolerance == 0.005
    assert load_profile_text(BASE).controls[0].tolerance is None
    choice = (
        "  - name: enable\n    ref: DER/DRCC1.DEREna.setVal\n    type: bool\n"
        "    choices: {connect: true, disconnect: false}\n    tolerance: 1\n"
    )
    assert "a tolerance is for numeric setpoints, not choices" in config_error(BASE + choice)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing profile file is reported with its path."""
    with pytest.raises(ConfigError, match="cannot read IEC 61850 profile"):
        load_profile(tmp_path / "absent.yaml")
