"""Settings: YAML file, DERIM_* variables, the earlier plain names, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from derim.config import load_settings
from derim.errors import ConfigError


def test_defaults_are_the_embedded_setup() -> None:
    """Out of the box: SQLite in ./data, API on 127.0.0.1:8000."""
    settings = load_settings()
    assert settings.storage_backend == "sqlite"
    assert settings.database_path == Path("data") / "derim.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("variable", "field", "value", "expected"),
    [
        ("STORAGE_BACKEND", "storage_backend", "influxdb", "influxdb"),
        ("INFLUXDB_URL", "influxdb_url", "http://db:8086", "http://db:8086"),
        ("APP_PORT", "port", "9100", 9100),
        ("LOG_LEVEL", "log_level", "DEBUG", "DEBUG"),
        ("LSTM_EPOCHS", "lstm_epochs", "7", 7),
        ("DERIM_PORT", "port", "9200", 9200),
        ("DERIM_RETENTION_DAYS", "retention_days", "30", 30.0),
    ],
)
def test_environment_names_are_honoured(
    monkeypatch: pytest.MonkeyPatch, variable: str, field: str, value: str, expected: object
) -> None:
    """Both DERIM_* and the earlier DERIM's plain variable names work."""
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), field) == expected


def test_yaml_file_with_fleet_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The YAML file sets values and the fleet; the environment overrides it."""
    config = tmp_path / "derim.yaml"
    config.write_text(
        "port: 8100\nretention_days: 7\ndevices:\n"
        "  - id: pv-1\n    device_type: solar_pv\n    rated_power_kw: 4.2\n"
    )
    monkeypatch.setenv("DERIM_PORT", "8200")
    settings = load_settings(config)
    assert settings.port == 8200
    assert settings.retention_days == 7
    assert settings.devices[0].id == "pv-1"
    assert settings.devices[0].rated_power_kw == 4.2


def test_invalid_config_names_the_field_path(tmp_path: Path) -> None:
    """A bad value fails at start with the path of the field at fault."""
    config = tmp_path / "bad.yaml"
    config.write_text("devices:\n  - id: pv-1\n    rated_power_kw: -3\n")
    with pytest.raises(ConfigError, match=r"devices\.0\.rated_power_kw"):
        load_settings(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    """A typo in the file is an error, not silently ignored."""
    config = tmp_path / "typo.yaml"
    config.write_text("prot: 8000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(config)


def test_password_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets never appear in the settings' repr."""
    monkeypatch.setenv("INFLUXDB_PASSWORD", "hunter2")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert settings.influxdb_password is not None
    assert settings.influxdb_password.get_secret_value() == "hunter2"


def test_shipped_example_config_is_valid() -> None:
    """examples/derim.yaml loads without errors."""
    example = Path(__file__).parents[2] / "examples" / "derim.yaml"
    settings = load_settings(example)
    assert [d.id for d in settings.devices] == ["pv-roof-1", "battery-1", "meter-site", "wallbox-1"]
