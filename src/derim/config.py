"""Settings: a YAML file plus environment variables (``DERIM_*`` and the earlier plain names).

Priority, highest first: explicit overrides, environment, the YAML file, defaults. Built in
``main()`` or by the caller of ``create_app``, never at import time.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from derim.errors import ConfigError
from derim.grid.dnp3.config import Dnp3Config
from derim.grid.openadr.config import OpenAdrConfig
from derim.grid.sep2.config import Sep2Config
from derim.models.device import DERDevice


def _setting(default: Any, name: str, *legacy: str, **constraints: Any) -> Any:
    """A setting read from YAML key ``name``, env ``DERIM_<NAME>`` or any ``legacy`` env name."""
    aliases = AliasChoices(name, f"DERIM_{name.upper()}", *legacy)
    return Field(default, validation_alias=aliases, **constraints)


class Settings(BaseSettings):
    """Everything DERIM reads at start."""

    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True)

    environment: Literal["development", "production"] = _setting("development", "environment")
    host: str = _setting("127.0.0.1", "host")
    port: int = _setting(8000, "port", "APP_PORT", ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "INFO", "log_level", "LOG_LEVEL"
    )
    log_format: Literal["json", "console"] | None = _setting(None, "log_format")
    """JSON lines or coloured console; by default JSON in production, console in development."""
    data_dir: Path = _setting(Path("data"), "data_dir")
    storage_backend: Literal["sqlite", "influxdb"] = _setting(
        "sqlite", "storage_backend", "STORAGE_BACKEND"
    )
    sqlite_path: Path | None = _setting(None, "sqlite_path")
    """Telemetry and registry database; ``<data_dir>/derim.db`` by default."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = _setting("NORMAL", "sqlite_synchronous")
    influxdb_url: str = _setting("http://127.0.0.1:8086", "influxdb_url", "INFLUXDB_URL")
    influxdb_database: str = _setting("derim", "influxdb_database", "INFLUXDB_DATABASE")
    influxdb_username: str | None = _setting(None, "influxdb_username", "INFLUXDB_USERNAME")
    influxdb_password: SecretStr | None = _setting(None, "influxdb_password", "INFLUXDB_PASSWORD")
    influxdb_timeout_s: float = _setting(10.0, "influxdb_timeout_s", gt=0)
    retention_days: float | None = _setting(None, "retention_days", gt=0)
    """Raw readings older than this are deleted (rollup tiers are kept); None keeps everything."""
    max_body_bytes: int = _setting(8 * 1024 * 1024, "max_body_bytes", ge=1024)
    ingest_max_batch: int = _setting(50_000, "ingest_max_batch", ge=1)
    ingest_max_pending: int = _setting(200_000, "ingest_max_pending", ge=1)
    spool_retry_s: float = _setting(1.0, "spool_retry_s", gt=0)
    lstm_epochs: int = _setting(50, "lstm_epochs", "LSTM_EPOCHS", ge=1)
    """Training epochs of the twin's LSTM forecaster."""
    mqtt_url: str | None = _setting(None, "mqtt_url", "MQTT_BROKER_URL", pattern=r"^mqtts?://")
    """Broker to ingest from, ``mqtt://host:1883`` or ``mqtts://host:8883``; None: no MQTT."""
    mqtt_username: str | None = _setting(None, "mqtt_username")
    mqtt_password: SecretStr | None = _setting(None, "mqtt_password")
    mqtt_client_id: str = _setting("derim", "mqtt_client_id", min_length=1, max_length=64)
    """Fixed, so that the broker keeps the session (and queued messages) across restarts."""
    mqtt_protocol: Literal["5", "3.1.1"] = _setting("5", "mqtt_protocol")
    mqtt_qos: int = _setting(1, "mqtt_qos", ge=0, le=1)
    mqtt_session_expiry_s: int = _setting(86_400, "mqtt_session_expiry_s", ge=0)
    mqtt_receive_maximum: int = _setting(10_000, "mqtt_receive_maximum", ge=1, le=65_535)
    """QoS 1 messages the broker may send before DERIM has stored and acknowledged them."""
    mqtt_shared_group: str | None = _setting(None, "mqtt_shared_group", pattern=r"^[^/+#]+$")
    """Subscribe as ``$share/<group>/...`` so that instances split the stream (MQTT 5)."""
    mqtt_mappings: list[str] = _setting(["gateway_json"], "mqtt_mappings")
    """Topic and payload mappings: shipped names or YAML file paths."""
    mqtt_register_unknown: bool = _setting(True, "mqtt_register_unknown")
    """Register a device the first time a mapping yields readings for it (else reject them)."""
    mqtt_tls_ca: Path | None = _setting(None, "mqtt_tls_ca")
    mqtt_tls_cert: Path | None = _setting(None, "mqtt_tls_cert")
    mqtt_tls_key: Path | None = _setting(None, "mqtt_tls_key")
    api_tls_cert: Path | None = _setting(None, "api_tls_cert")
    api_tls_key: Path | None = _setting(None, "api_tls_key")
    """With both set, ``derim serve`` serves the API over HTTPS."""
    allowed_networks: list[IPv4Network | IPv6Network] = _setting(
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        "allowed_networks",
    )
    """Networks that devices registered over the API may be reached in (loopback and private
    ranges by default); a host resolving outside them is refused."""
    rate_limit_per_s: float = _setting(50.0, "rate_limit_per_s", gt=0)
    rate_limit_burst: int = _setting(200, "rate_limit_burst", ge=1)
    """Requests each API key may make: a sustained rate (per s) and a burst; then 429."""
    cors_origins: list[str] = _setting([], "cors_origins")
    """Browser origins (``https://dashboard.example``) allowed to call the API; none by
    default, and never ``*``."""
    auth_enabled: bool = _setting(True, "auth_enabled")
    """Require an API key on every route but /health; false only for a local demo (loudly)."""
    control_wait_s: float = _setting(10.0, "control_wait_s", gt=0, le=600)
    """How long ``POST /api/v1/control`` waits for the device's answer before replying 202."""
    stream_buffer: int = _setting(1000, "stream_buffer", ge=1, le=100_000)
    """Messages a stream client may fall behind by before its oldest are dropped (and counted)."""
    anomaly_scan_interval_s: float | None = _setting(900.0, "anomaly_scan_interval_s", gt=0)
    """How often every device's last day is scanned for anomalies (new ones are streamed as
    events); None: only when asked (``GET /api/v1/twin/{id}/anomalies``)."""
    forecast_refresh_interval_s: float | None = _setting(900.0, "forecast_refresh_interval_s", gt=0)
    """How often the next 24 h power forecast of every device with a trained (selected) model is
    made and stored (InfluxDB: measurement ``forecast``, for Grafana); None: only when served."""
    stream_compression: bool = _setting(False, "stream_compression")
    """Offer permessage-deflate on the stream's WebSocket: JSON shrinks ~5x, but every client's
    copy is compressed on its own, which costs more CPU than the wire saves on a LAN."""
    stream_max_clients: int = _setting(2000, "stream_max_clients", ge=1, le=100_000)
    """Concurrent WebSocket and SSE stream clients; more are refused."""
    ocpp_enabled: bool = _setting(True, "ocpp_enabled")
    """Run the OCPP central system that EV chargers connect to."""
    ocpp_port: int = _setting(9000, "ocpp_port", ge=0, le=65535)
    """Port of ``ws://<host>:<port>/ocpp/{charge_point_id}``; 0 picks a free one."""
    ocpp_register_unknown: bool = _setting(True, "ocpp_register_unknown")
    """Register a charger that connects with an unknown id (else refuse its connection)."""
    ocpp_security_profile: Literal[0, 1, 2] = _setting(0, "ocpp_security_profile")
    """0: no authentication; 1: HTTP Basic with per-charger passwords; 2: Basic over TLS."""
    ocpp_passwords: dict[str, SecretStr] = _setting({}, "ocpp_passwords")
    """Per-charger Basic-auth passwords, by charge point id (security profiles 1 and 2)."""
    ocpp_tls_cert: Path | None = _setting(None, "ocpp_tls_cert")
    ocpp_tls_key: Path | None = _setting(None, "ocpp_tls_key")
    ocpp_strict: bool = _setting(False, "ocpp_strict")
    """Refuse any message that breaks the schema; by default an unknown (extra or misspelt)
    optional field is logged and dropped, and only real violations get a CallError."""
    ocpp_call_timeout_s: float = _setting(30.0, "ocpp_call_timeout_s", gt=0, le=600)
    """How long a charger may take to answer a CALL from DERIM."""
    ocpp_message_timeout_s: float = _setting(10.0, "ocpp_message_timeout_s", gt=0, le=600)
    """How long DERIM may take to handle one message from a charger before answering an error."""
    ocpp_heartbeat_interval_s: int = _setting(300, "ocpp_heartbeat_interval_s", ge=1)
    """Heartbeat interval given to chargers at boot."""
    ocpp_ping_interval_s: float = _setting(60.0, "ocpp_ping_interval_s", ge=0)
    """WebSocket ping interval; a charger that misses a pong is dropped. 0 disables pings."""
    ocpp_allowed_id_tags: list[str] | None = _setting(None, "ocpp_allowed_id_tags")
    """Id tags that Authorize accepts; None accepts any."""
    openadr: OpenAdrConfig | None = _setting(None, "openadr")
    """An OpenADR 2.0b VEN: the VTN, its programmes and the groups they steer; None: off."""
    dnp3: Dnp3Config | None = _setting(None, "dnp3")
    """A DNP3 outstation toward a utility master: listen address and point map; None: off."""
    sep2: Sep2Config | None = _setting(None, "sep2")
    """An IEEE 2030.5 client (CSIP aggregator): the server, client certificate and the
    EndDevices' devices; None: off."""
    devices: list[DERDevice] = _setting([], "devices")
    """The fleet: devices registered (or updated) at start."""

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*" or not origin.startswith(("https://", "http://")):
                raise ValueError(f"{origin!r}: name each origin as scheme://host[:port]")
        return origins

    @property
    def database_path(self) -> Path:
        """Where the SQLite database (telemetry and the device registry) lives."""
        return self.sqlite_path or self.data_dir / "derim.db"

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        """The log format in force."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "console"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file`` (YAML), the environment and ``overrides``.

    Raises ``ConfigError`` naming every invalid field path.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        return _FileSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        source = f" in {config_file}" if config_file else ""
        raise ConfigError(f"invalid settings{source}: {problems}") from exc
