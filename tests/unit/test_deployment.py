"""The container files, checked statically (no Docker engine here): docker-compose.yml, the
Dockerfile, the Grafana/Prometheus provisioning and the Mosquitto config."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from derim.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
DERIM_SERVICES = ("derim", "derim-ml")
CLIENT_ENV = {"DERIM_URL", "DERIM_API_KEY"}
"""What ``derim.client``'s ``from_env`` reads (the notebooks' client), not settings."""


def settings_env_names() -> set[str]:
    """Every environment name Settings reads: ``DERIM_<FIELD>`` and the legacy plain names."""
    names = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        assert isinstance(alias, AliasChoices)
        names.update(choice for choice in alias.choices if isinstance(choice, str))
    return {name for name in names if name.isupper()}


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (YAML anchors and merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def in_profile(profile: str) -> set[str]:
    """The services ``docker compose --profile <profile> up`` starts."""
    return {name for name, spec in services().items() if profile in spec.get("profiles", [])}


def interpolated(value: str, overrides: dict[str, str]) -> str:
    """``value`` with ``${VAR:-default}`` / ``${VAR:?message}`` resolved from ``overrides``."""

    def resolve(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if name in overrides:
            return overrides[name]
        if operator in (":-", "-"):
            return str(default)
        raise AssertionError(f"{name} must be set ({default})")

    return INTERPOLATION.sub(resolve, value)


@dataclass
class Stage:
    """One build stage of the Dockerfile: its base, name and instructions in order."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of the stage."""
        return [rest for word, rest in self.instructions if word == keyword]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages: continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: list[Stage] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif stages:
            stages[-1].instructions.append((word.upper(), rest.strip()))
    return stages


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    return next(s for s in dockerfile_stages() if s.name == name)


def lineage(name: str) -> list[Stage]:
    """The stage ``name`` and every stage it is built FROM, nearest first."""
    chain = [stage(name)]
    names = {s.name for s in dockerfile_stages()}
    while chain[-1].base in names:
        chain.append(stage(chain[-1].base))
    return chain


def load_entrypoint() -> ModuleType:
    """deploy/entrypoint.py as a module."""
    spec = importlib.util.spec_from_file_location("derim_entrypoint", ROOT / "deploy/entrypoint.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profiles_start_the_documented_services() -> None:
    """core is DERIM + InfluxDB + Mosquitto; monitoring adds Grafana and Prometheus; ml adds
    the torch image and Jupyter."""
    assert in_profile("core") == {"derim", "influxdb", "mosquitto"}
    assert in_profile("monitoring") == {"derim", "influxdb", "mosquitto", "grafana", "prometheus"}
    assert in_profile("ml") == {"derim-ml", "influxdb", "mosquitto", "jupyter"}
    assert all(spec.get("profiles") for spec in services().values()), "no service always on"


def test_every_derim_variable_in_compose_is_a_setting() -> None:
    """Each variable given to DERIM, and each DERIM_* name anywhere in the file, is one that
    Settings reads (a field's DERIM_ name or a legacy alias)."""
    known = settings_env_names()
    for name in DERIM_SERVICES:
        environment = services()[name]["environment"]
        assert set(environment) <= known, set(environment) - known
    text = COMPOSE.read_text()
    mentioned = set(re.findall(r"\bDERIM_[A-Z0-9_]+\b", text))
    assert mentioned <= known | CLIENT_ENV, mentioned - known - CLIENT_ENV


def test_jupyter_reaches_derim_through_the_client_variables() -> None:
    """The notebooks' client is pointed at the DERIM service (inside the jupyter container
    127.0.0.1 would be jupyter itself) and given only the client's variables."""
    environment = services()["jupyter"]["environment"]
    assert set(environment) == CLIENT_ENV
    assert environment["DERIM_URL"] == "http://derim:8000"
    assert "derim" in services()["derim-ml"]["networks"]["default"]["aliases"]


def test_compose_environment_is_valid_settings_for_the_influx_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variables compose passes, with secrets filled in, load as valid settings that
    point DERIM at the influxdb and mosquitto services."""
    for name in list(settings_env_names()):
        monkeypatch.delenv(name, raising=False)
    secrets = {"DERIM_INFLUXDB_PASSWORD": "s3cret", "DERIM_MQTT_PASSWORD": "m0squitto"}
    for key, value in services()["derim"]["environment"].items():
        monkeypatch.setenv(key, interpolated(str(value), secrets))
    settings = load_settings()
    assert settings.storage_backend == "influxdb"
    assert settings.influxdb_url == "http://influxdb:8086"
    assert settings.mqtt_url == "mqtt://mosquitto:1883"
    assert settings.influxdb_password is not None
    assert settings.influxdb_password.get_secret_value() == "s3cret"
    assert (settings.host, settings.port, settings.environment) == ("0.0.0.0", 8000, "production")
    assert settings.retention_days == 365


def test_secrets_have_no_defaults() -> None:
    """Passwords must come from the operator: compose refuses to start without them."""
    for match in INTERPOLATION.finditer(COMPOSE.read_text()):
        name, operator, _ = match.groups()
        if "PASSWORD" in name:
            assert operator == ":?", f"{name} needs ${{{name}:?...}}"


def test_services_have_healthchecks_and_derim_waits_for_its_backends() -> None:
    """Every service DERIM or the dashboards depend on reports its health; DERIM starts once
    InfluxDB and Mosquitto are healthy."""
    for name in ("influxdb", "mosquitto", "grafana", "prometheus"):
        assert services()[name]["healthcheck"]["test"], name
    for name in DERIM_SERVICES:
        depends = services()[name]["depends_on"]
        assert depends["influxdb"]["condition"] == "service_healthy"
        assert depends["mosquitto"]["condition"] == "service_healthy"


def test_build_targets_are_dockerfile_stages() -> None:
    """Each service built here names a stage that exists."""
    names = {s.name for s in dockerfile_stages()}
    targets = {spec["build"]["target"] for spec in services().values() if "build" in spec}
    assert targets == {"runtime", "ml", "notebook"}
    assert targets <= names


def test_mounted_files_exist() -> None:
    """Every host path compose mounts is in the repository (else Docker makes empty dirs)."""
    for name, spec in services().items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./notebooks":
                assert (ROOT / source).exists(), f"{name}: {source}"


def mount_target(service: str, source: str) -> str:
    """Where ``service`` mounts the host path ``source``."""
    for volume in services()[service]["volumes"]:
        parts = volume.split(":")
        if parts[0] == source:
            return str(parts[1])
    raise AssertionError(f"{service} does not mount {source}")


def test_grafana_provisioning_names_the_datasources_and_the_dashboards_folder() -> None:
    """Grafana gets the InfluxDB 1.x datasource on DERIM's database and Prometheus, and loads
    dashboards from where compose mounts deploy/grafana/dashboards."""
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert mount_target("grafana", "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources/derim.yaml").read_text())["datasources"]
    by_name = {source["name"]: source for source in sources}
    influx, prometheus = by_name["DERIM InfluxDB"], by_name["Prometheus"]
    assert influx["type"] == "influxdb"
    assert influx["url"] == "http://influxdb:8086"
    database_variable = INTERPOLATION.fullmatch(influx["jsonData"]["dbName"])
    assert database_variable is not None
    environment = services()["grafana"]["environment"]
    assert database_variable.group(1) in environment
    derim_database = services()["derim"]["environment"]["DERIM_INFLUXDB_DATABASE"]
    assert environment[database_variable.group(1)] == derim_database
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/derim.yaml").read_text())["providers"][0]
    dashboards = mount_target("grafana", "./deploy/grafana/dashboards")
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards


def test_prometheus_scrapes_derim_metrics_with_a_mounted_token() -> None:
    """Prometheus scrapes derim:8000/metrics with a bearer token file inside its mounted config."""
    config_dir = mount_target("prometheus", "./deploy/prometheus")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "derim"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["derim:8000"]
    assert job["authorization"]["credentials_file"].startswith(config_dir + "/")
    assert f"--config.file={config_dir}/prometheus.yml" in services()["prometheus"]["command"]


def test_mosquitto_refuses_anonymous_clients() -> None:
    """The broker config requires a login, from a password file on the broker's data volume."""
    options = dict(
        line.split(None, 1)
        for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert options["allow_anonymous"] == "false"
    data_volume = next(v for v in services()["mosquitto"]["volumes"] if v.startswith("mosquitto-"))
    assert options["password_file"].startswith(data_volume.split(":")[1])
    assert mount_target("mosquitto", "./deploy/mosquitto/mosquitto.conf").endswith(
        "/mosquitto.conf"
    )


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    """Wheels are built in their own stage; the image runs as a named non-root user."""
    stages = dockerfile_stages()
    assert stages[-1].name == "runtime", "a plain `docker build .` must give the runtime image"
    assert stage("builder").args("RUN"), "the builder builds the wheels"
    assert any("from=builder" in run for run in stage("core").args("RUN"))
    for name in ("runtime", "ml", "notebook"):
        users = [user for s in reversed(lineage(name)) for user in s.args("USER")]
        assert users, name
        assert users[-1] not in ("root", "0"), f"{name} ends as {users[-1]}"


def test_dockerfile_healthcheck_exposes_the_api_and_uses_the_entrypoint() -> None:
    """The image exposes the API and OCPP ports, checks /health with the start-up script, and
    that script is the one in deploy/."""
    core = stage("core")
    assert "8000" in " ".join(core.args("EXPOSE")).split()
    assert str(Settings.model_fields["port"].default) == "8000"
    assert str(Settings.model_fields["ocpp_port"].default) in " ".join(core.args("EXPOSE")).split()
    (copy,) = [c for c in core.args("COPY") if "entrypoint" in c]
    source, target = copy.split()
    assert (ROOT / source).is_file()
    (healthcheck,) = core.args("HEALTHCHECK")
    assert target in healthcheck
    assert "--health" in healthcheck
    (entrypoint,) = core.args("ENTRYPOINT")
    assert target in entrypoint


def test_torch_only_in_the_ml_stages_at_the_pinned_version() -> None:
    """No torch in the builder or the runtime image; the ml stage installs the pyproject pin."""
    for name in ("builder", "core", "runtime"):
        assert "torch" not in " ".join(run for _, run in stage(name).instructions).lower(), name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["ml"] if "torch" in d]
    version = pin.split("==")[1].split()[0].strip('"')
    ml = stage("ml")
    assert f"TORCH_VERSION={version}" in ml.args("ARG")
    assert any("torch==${TORCH_VERSION}" in run for run in ml.args("RUN"))
    assert "torch" not in " ".join(pyproject["project"]["dependencies"])


def test_dockerignore_lets_the_copied_sources_through() -> None:
    """Everything the Dockerfile COPYs from the context is re-included in .dockerignore."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for s in dockerfile_stages():
        for copy in s.args("COPY"):
            if copy.startswith("--from"):
                continue
            for source in copy.split()[:-1]:
                assert source.rstrip("/").split("/")[0] in allowed, source


def test_entrypoint_waits_only_for_what_the_settings_use() -> None:
    """SQLite without MQTT waits for nothing; InfluxDB and a broker are waited for."""
    entrypoint = load_entrypoint()
    assert entrypoint.dependencies(load_settings(storage_backend="sqlite")) == {}
    settings = load_settings(
        storage_backend="influxdb", influxdb_url="http://db:8086", mqtt_url="mqtt://broker:1883"
    )
    assert entrypoint.dependencies(settings) == {
        "InfluxDB": ("influxdb", "http://db:8086"),
        "MQTT broker": ("mqtt", "mqtt://broker:1883"),
    }


def test_entrypoint_health_url_reaches_a_wildcard_bind_on_loopback() -> None:
    """A server bound to 0.0.0.0 is probed on 127.0.0.1, over HTTPS when the API has TLS."""
    entrypoint = load_entrypoint()
    assert entrypoint.health_url(load_settings(host="0.0.0.0", port=8123)) == (
        "http://127.0.0.1:8123/health"
    )
    tls = load_settings(host="::1", port=8443, api_tls_cert="c.pem", api_tls_key="k.pem")
    assert entrypoint.health_url(tls) == "https://[::1]:8443/health"


def test_deployment_doc_lists_every_environment_variable() -> None:
    """docs/deployment.md's table has one row per setting, with its legacy names, and no more."""
    rows = {}
    for line in (ROOT / "docs/deployment.md").read_text().splitlines():
        if line.startswith("| `DERIM_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = set(re.findall(r"`([A-Z0-9_]+)`", cells[1]))
    expected = {}
    for name, info in Settings.model_fields.items():
        assert isinstance(info.validation_alias, AliasChoices)
        names = {c for c in info.validation_alias.choices if isinstance(c, str) and c.isupper()}
        expected[f"DERIM_{name.upper()}"] = names - {f"DERIM_{name.upper()}"}
    assert rows == expected


def test_serving_path_imports_no_numeric_stack() -> None:
    """``derim serve``'s imports (CLI, settings, app) load neither torch nor the twin's pandas,
    NumPy, SciPy, LightGBM or pvlib: the edge profile's memory and start-up depend on it."""
    probe = (
        "import sys, derim.cli\n"
        "from derim.api.app import create_app\n"
        "heavy = ('torch', 'numpy', 'pandas', 'scipy', 'lightgbm', 'pvlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
