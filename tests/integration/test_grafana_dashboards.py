"""The provisioned Grafana dashboards (deploy/grafana/dashboards): well-formed, on the provisioned
datasources, their InfluxQL answered with data by a real influxd holding telemetry and forecasts
DERIM wrote, their PromQL naming only metrics that ``derim serve`` exposes at /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from influxd import InfluxServer, free_ports

from derim.models.common import ConnectorStatus, OperatingState
from derim.models.telemetry import (
    BatteryTelemetry,
    DERTelemetry,
    EVChargerTelemetry,
    MeterTelemetry,
    SolarTelemetry,
)
from derim.storage.base import StoredForecastPoint
from derim.storage.influx import InfluxStore

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = {
    path.name: json.loads(path.read_text()) for path in sorted(GRAFANA.glob("dashboards/*.json"))
}
PROVISIONED = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "derim.yaml").read_text())
INFLUX = "influxdb"
PROMETHEUS = "prometheus"
DEVICES = ("pv-1", "battery-1", "meter-1", "evse-1")
INTERVAL = "1m"
"""What ``$__interval`` stands for while the queries run."""
FORECAST_DEVICE = "pv-1"
FORECAST_STEP = timedelta(minutes=15)
RELATIVE_TIME = re.compile(r"^now(?:([+-])(\d+)([mhd]))?$")
TIME_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}

_TARGET = {
    "type": "object",
    "required": ["refId", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "datasource": {"$ref": "#/$defs/datasource"},
        "query": {"type": "string", "minLength": 1},
        "rawQuery": {"const": True},
        "resultFormat": {"enum": ["time_series", "table"]},
        "expr": {"type": "string", "minLength": 1},
    },
    "if": {"properties": {"datasource": {"properties": {"type": {"const": INFLUX}}}}},
    "then": {"required": ["query", "rawQuery", "resultFormat"], "not": {"required": ["expr"]}},
    "else": {"required": ["expr"], "not": {"required": ["query"]}},
}
_GRID_POS = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
}
_PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["timeseries", "stat", "table", "text"]},
        "title": {"type": "string", "minLength": 1},
        "gridPos": _GRID_POS,
    },
    "if": {"properties": {"type": {"const": "text"}}},
    "then": {"required": ["options"], "not": {"required": ["targets"]}},
    "else": {
        "required": ["datasource", "targets", "description", "fieldConfig"],
        "properties": {
            "datasource": {"$ref": "#/$defs/datasource"},
            "targets": {"type": "array", "minItems": 1, "items": _TARGET},
        },
    },
}
DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "datasource": {
            "type": "object",
            "required": ["type", "uid"],
            "properties": {"type": {"enum": [INFLUX, PROMETHEUS]}, "uid": {"type": "string"}},
            "additionalProperties": False,
        }
    },
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "time", "templating", "panels", "tags"],
    "properties": {
        "uid": {"type": "string", "pattern": "^derim-[a-z-]+$", "maxLength": 40},
        "title": {"type": "string", "pattern": "^DERIM / "},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {"type": "object", "required": ["type", "name", "query"]},
                }
            },
        },
        "panels": {"type": "array", "minItems": 1, "items": _PANEL},
        "tags": {"type": "array", "contains": {"const": "derim"}},
    },
}
"""The subset of Grafana's dashboard model these dashboards use."""


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every panel with its dashboard's file name."""
    for name, dashboard in DASHBOARDS.items():
        for panel in dashboard["panels"]:
            yield name, panel


def targets(datasource: str) -> list[tuple[str, str]]:
    """(test id, query) of every target on ``datasource``, over all dashboards."""
    found = []
    for name, panel in panels():
        for target in panel.get("targets", []):
            if target["datasource"]["type"] == datasource:
                text = target.get("query" if datasource == INFLUX else "expr", "")
                found.append((f"{name}:{panel['title']}:{target['refId']}", text))
    return found


INFLUXQL = targets(INFLUX)
PROMQL = targets(PROMETHEUS)


def test_the_four_dashboards_are_there() -> None:
    """Fleet overview, device telemetry, OCPP chargers and DERIM's health are provisioned."""
    assert set(DASHBOARDS) == {
        "fleet-overview.json",
        "device-telemetry.json",
        "ocpp-chargers.json",
        "derim-health.json",
    }


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_matches_the_schema(name: str) -> None:
    """Each file is a dashboard whose panels name a provisioned datasource and carry queries."""
    jsonschema.validate(DASHBOARDS[name], DASHBOARD_SCHEMA)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    """Panel ids are unique, each panel fits in 24 columns and no two share a grid cell."""
    taken: dict[tuple[int, int], str] = {}
    ids = [panel["id"] for panel in DASHBOARDS[name]["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARDS[name]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_uids_and_titles_are_unique() -> None:
    """No two dashboards share a uid or a title (Grafana would keep only one)."""
    uids = [dashboard["uid"] for dashboard in DASHBOARDS.values()]
    titles = [dashboard["title"] for dashboard in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


def test_targets_use_their_panels_datasource() -> None:
    """A target's datasource is its panel's, so Grafana sends each query where it belongs."""
    for _, panel in panels():
        for target in panel.get("targets", []):
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_datasource_is_provisioned_with_its_type() -> None:
    """Panels and variables name datasources by the uid and type the provisioning gives them."""
    provisioned = {source["uid"]: source["type"] for source in PROVISIONED["datasources"]}
    used = [panel["datasource"] for _, panel in panels() if "datasource" in panel]
    for dashboard in DASHBOARDS.values():
        used += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert used
    for reference in used:
        assert provisioned.get(reference["uid"]) == reference["type"], reference


# ---------------------------------------------------------------- InfluxQL against influxd


def fleet(now: datetime) -> list[DERTelemetry]:
    """Two hours of one-minute readings of a PV inverter, a battery, a meter and a charger."""
    records: list[DERTelemetry] = []
    for minute in range(120):
        at = now - timedelta(minutes=120 - minute)
        common = {"timestamp": at, "voltage_v": 230 + minute % 3, "frequency_hz": 50.0}
        records += [
            SolarTelemetry(
                device_id="pv-1", **common, power_kw=4.0, reactive_power_kvar=0.1,
                current_a=5.8, energy_kwh=1000 + minute / 15, state=OperatingState.ON,
                irradiance_w_m2=800, panel_temperature_c=35, dc_power_kw=4.2,
            ),
            BatteryTelemetry(
                device_id="battery-1", **common, power_kw=-2.0, soc_percent=40 + minute / 10,
                soh_percent=97, temperature_c=25, state=OperatingState.CHARGING,
            ),
            MeterTelemetry(
                device_id="meter-1", **common, power_kw=1.5, current_a=6.5,
                energy_import_kwh=500, energy_export_kwh=300 + minute / 40, power_factor=0.98,
            ),
            EVChargerTelemetry(
                device_id="evse-1", timestamp=at, power_kw=-7.2, connector_id=1,
                connector_status=ConnectorStatus.CHARGING, session_energy_kwh=minute * 0.12,
                energy_import_kwh=2000 + minute * 0.12, transaction_id="tx-1",
                current_l1_a=10.4, current_l2_a=10.4, current_l3_a=10.5,
            ),
        ]  # fmt: skip
    return records


def forecast(now: datetime) -> list[StoredForecastPoint]:
    """A day of 15-min PV power forecast (kW) from the next quarter hour after ``now``."""
    first = now - (now - datetime(2000, 1, 1, tzinfo=UTC)) % FORECAST_STEP + FORECAST_STEP
    return [
        StoredForecastPoint(first + step * FORECAST_STEP, 1.0 + step / 100, 2.0 + step / 100, 3.0)
        for step in range(96)
    ]


async def _write_fleet(server: InfluxServer, database: str, now: datetime) -> None:
    store = InfluxStore(server.url, database, timeout_s=10.0)
    await store.open()
    try:
        await store.write(fleet(now))
        await store.write_forecast(FORECAST_DEVICE, "seasonal_daily", now, forecast(now))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def telemetry_db(influxd: InfluxServer) -> Iterator[tuple[str, datetime]]:
    """A database holding the fleet's telemetry and a forecast of the PV inverter, written
    through DERIM's InfluxStore."""
    database = f"grafana_{os.getpid()}"
    now = datetime.now(UTC).replace(microsecond=0)
    asyncio.run(_write_fleet(influxd, database, now))
    yield database, now
    httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{database}"'})


def default_range(dashboard: str, now: datetime) -> tuple[datetime, datetime]:
    """The dashboard's default time range (``now``, ``now-6h``, ``now+24h``, ...) at ``now``."""
    bounds = []
    for text in (DASHBOARDS[dashboard]["time"]["from"], DASHBOARDS[dashboard]["time"]["to"]):
        match = RELATIVE_TIME.match(text)
        assert match is not None, f"{dashboard}: time {text!r} is not relative to now"
        sign, count, unit = match.groups()
        offset = TIME_UNITS[unit] * int(count) if count else timedelta(0)
        bounds.append(now - offset if sign == "-" else now + offset)
    return bounds[0], bounds[1]


def grafana_substitute(query: str, dashboard: str, now: datetime, device_id: str) -> str:
    """``query`` as Grafana sends it over the dashboard's default range, with a 1 min interval
    and one device (a single-valued variable goes in as it is)."""
    start, end = default_range(dashboard, now)
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000) + 1
    return (
        query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
        .replace("$__interval", INTERVAL)
        .replace("$device_id", device_id)
    )


def run_influxql(server: InfluxServer, database: str, statement: str) -> dict[str, Any]:
    """The first result of ``statement``; fails on an error."""
    response = httpx.post(f"{server.url}/query", data={"q": statement, "db": database}, timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()["results"][0]
    assert "error" not in result, f"{statement}\n{result['error']}"
    return result


def has_values(result: dict[str, Any]) -> bool:
    """Whether a result holds at least one non-null value besides the time column."""
    return any(
        value is not None
        for series in result.get("series", [])
        for row in series["values"]
        for column, value in zip(series["columns"], row, strict=True)
        if column != "time"
    )


@pytest.mark.parametrize(("where", "query"), INFLUXQL, ids=[where for where, _ in INFLUXQL])
def test_influxql_query_returns_data(
    influxd: InfluxServer, telemetry_db: tuple[str, datetime], where: str, query: str
) -> None:
    """With Grafana's variables filled in, the query runs and returns values (for at least one
    device where it has a device variable)."""
    database, now = telemetry_db
    dashboard = where.split(":", 1)[0]
    devices = DEVICES if "$device_id" in query else DEVICES[:1]
    statements = [grafana_substitute(query, dashboard, now, device) for device in devices]
    for statement in statements:
        assert re.search(r"\$\w", statement) is None, f"unsubstituted variable in {statement}"
    results = [run_influxql(influxd, database, statement) for statement in statements]
    assert any(has_values(result) for result in results), f"{where}: no data for {statements}"


def test_forecast_panel_plots_the_stored_forecast_ahead_of_measured_power(
    influxd: InfluxServer, telemetry_db: tuple[str, datetime]
) -> None:
    """On the device dashboard's default range, the forecast panel's queries return the measured
    power up to now and the stored P10/P50/P90, by model, at their future target times."""
    database, now = telemetry_db
    (panel,) = [
        p
        for p in DASHBOARDS["device-telemetry.json"]["panels"]
        if any('FROM "forecast"' in t["query"] for t in p.get("targets", []))
    ]
    measured, predicted = (
        run_influxql(
            influxd,
            database,
            grafana_substitute(t["query"], "device-telemetry.json", now, FORECAST_DEVICE),
        )
        for t in panel["targets"]
    )
    assert has_values(measured)
    assert "power_kw" in panel["targets"][0]["query"]
    (series,) = predicted["series"]
    assert series["tags"] == {"model": "seasonal_daily"}
    assert series["columns"] == ["time", "p10", "p50", "p90"]
    written = {to_iso(p.time): [p.p10, p.p50, p.p90] for p in forecast(now)}
    returned = {row[0]: row[1:] for row in series["values"]}
    assert returned == written
    assert min(returned) > to_iso(now)


def to_iso(value: datetime) -> str:
    """The RFC 3339 form InfluxDB answers with for a whole-second UTC instant."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_device_variable_lists_every_device(
    influxd: InfluxServer, telemetry_db: tuple[str, datetime]
) -> None:
    """The device picker's query lists the devices DERIM wrote."""
    database, _ = telemetry_db
    (variable,) = [
        v
        for v in DASHBOARDS["device-telemetry.json"]["templating"]["list"]
        if v["name"] == "device_id"
    ]
    assert variable["datasource"]["type"] == INFLUX
    result = run_influxql(influxd, database, variable["query"])
    listed = {row[1] for series in result["series"] for row in series["values"]}
    assert listed == set(DEVICES)


# ---------------------------------------------------------------- PromQL against /metrics


@pytest.fixture(scope="module")
def exposed_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names of the samples ``derim serve`` exposes at /metrics (auth off, loopback)."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DERIM_DATA_DIR": str(tmp_path_factory.mktemp("serve")),
        "APP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "DERIM_AUTH_ENABLED": "false",
        "DERIM_OCPP_PORT": "0",
    }
    command = [sys.executable, "-m", "derim.cli", "serve"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("derim serve did not come up")
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    response.raise_for_status()
    return {
        line.split("{")[0].split(" ")[0]
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }


def test_derim_serve_exposes_the_gc_pause_histogram(exposed_metrics: set[str]) -> None:
    """The health dashboard's pause panel has its histogram to read."""
    assert "derim_gc_pause_seconds_bucket" in exposed_metrics


@pytest.mark.parametrize(("where", "expr"), PROMQL, ids=[where for where, _ in PROMQL])
def test_promql_names_only_exposed_metrics(
    exposed_metrics: set[str], where: str, expr: str
) -> None:
    """Every DERIM metric the expression reads is one /metrics exposes, and it reads one."""
    names = set(re.findall(r"\bderim_\w+", expr))
    assert names, f"{where} reads no DERIM metric"
    assert names <= exposed_metrics, f"{where}: {sorted(names - exposed_metrics)} not exposed"
