"""The ``derim`` command: serve the API, run the demo, manage devices, import and export CSV."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ipaddress
import random
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
import orjson
import uvicorn
from tqdm import tqdm

from derim import __version__
from derim.cli_keys import keys
from derim.cli_remote import remote
from derim.cli_twin import twin
from derim.config import Settings, load_settings
from derim.errors import DerimError
from derim.logging import configure_logging
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.security.audit import AuditEntry, AuditLog
from derim.security.keys import Role
from derim.services import Services, running_services
from derim.sim.ocpp_charger import SimulatedCharger
from derim.storage.base import Aggregation, Interval, TelemetryQuery, to_epoch_ms
from derim.storage.registry import DeviceRegistry
from derim.tasks import cancel_and_wait

T = TypeVar("T")
IMPORT_CHUNK = 5_000
LIVE_INTERVAL_S = 10.0
DEMO_METER_INTERVAL_S = 5.0
DEMO_FORECASTS = ("pv-roof-2", "load-house")
"""Devices fed with history whose forecasters the demo trains at start."""
DEMO_MODELS = ("seasonal_daily", "moving_average", "clearsky_persistence", "gbm", "ensemble")
"""The quick models (the LSTM takes most of a minute on its own)."""
"""How often the demo chargers send meter values (s)."""


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _run(coro: Awaitable[T]) -> T:
    """Run a coroutine; DERIM errors become a one-line message and exit status 2."""

    async def wrapped() -> T:
        return await coro

    try:
        return asyncio.run(wrapped())
    except DerimError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(__version__, prog_name="derim")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings and fleet file.",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """DERIM: distributed energy resources in, one canonical model and API out."""
    try:
        settings = load_settings(config_file)
    except DerimError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings.log_level, settings.effective_log_format)
    ctx.obj = settings


@main.command()
@click.option("--host", help="Bind address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port (default from settings: 8000).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the middleware and its REST API."""
    from derim.api.app import create_app
    from derim.runtime import tune_collector

    settings = _settings(ctx)
    app = create_app(settings)
    tune_collector()
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_config=None,
        ssl_certfile=settings.api_tls_cert,
        ssl_keyfile=settings.api_tls_key,
        ws_per_message_deflate=settings.stream_compression,
    )


@main.command()
@click.option("--host", help="Bind address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port (default from settings: 8000).")
@click.pass_context
def demo(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the API with a sample fleet: a simulated SunSpec PV inverter and battery polled
    over Modbus TCP, MQTT meters, OCPP chargers, other devices fed every 10 s, and a day of
    history. Bound to a loopback address, it runs without API keys."""
    settings = _settings(ctx)
    host = host or settings.host
    if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        # Only this machine can reach it: the demo runs without API keys (and says so loudly).
        settings = settings.model_copy(update={"auth_enabled": False})
    _run(_serve_demo(settings, host, port or settings.port))


async def _serve_demo(settings: Settings, host: str, port: int) -> None:
    from derim.api.app import create_app
    from derim.demo import (
        CHARGERS,
        POLLED_DEVICES,
        readings_at,
        sample_day,
        sample_fleet,
        sample_history,
    )
    from derim.sim.mqtt_meter import MqttMeterSim
    from derim.sim.sunspec_fleet import SunSpecFleetSim

    simulator = await SunSpecFleetSim().start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(simulator.stop)
        broker = await _demo_broker(settings, stack)
        fleet = sample_fleet(sunspec_port=simulator.port)
        update: dict[str, object] = {"devices": fleet}
        if broker is not None:
            update |= {"mqtt_url": broker, "mqtt_mappings": ["gateway_json"]}
        app = create_app(settings.model_copy(update=update))
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            ws_per_message_deflate=settings.stream_compression,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.05)
        services: Services = app.state.services
        now = datetime.now(UTC)
        history = sample_history(now) + sample_day(now)
        await services.ingest(history)
        url = f"http://{host}:{port}"
        click.echo(f"DERIM demo: {len(history)} readings loaded. Dashboard {url}/  docs {url}/docs")
        await _demo_key(services)
        click.echo(
            f"Simulated site on 127.0.0.1:{simulator.port} (SunSpec PV and battery on units 1-2,"
            " Modbus meter on unit 3), polled every second"
        )
        if broker is None:
            click.echo("No MQTT broker (set DERIM_MQTT_URL or install mosquitto): no MQTT meters")
        else:
            meters = await MqttMeterSim(broker).start()
            stack.push_async_callback(meters.stop)
            click.echo(f"MQTT broker {broker}: meters {', '.join(meters.device_ids())} publish"
                       " every second (mapping gateway_json)")  # fmt: skip
        await _demo_chargers(services, stack)
        await _demo_twin(services)
        click.echo(f"Try: curl '{url}/api/v1/telemetry/pv-roof-1/latest'")
        rng, soc = random.Random(7), [50.0]
        live_elsewhere = {*POLLED_DEVICES, *CHARGERS}
        while not serving.done():
            live = readings_at(datetime.now(UTC), rng, soc)
            await services.ingest([r for r in live if r.device_id not in live_elsewhere])
            await asyncio.wait({serving}, timeout=LIVE_INTERVAL_S)


async def _demo_chargers(services: Services, stack: contextlib.AsyncExitStack) -> None:
    """Connect the sample chargers, with EVs coming and going, and give their site a limit."""
    from derim.demo import CARPORT, CARPORT_LIMIT_KW, CHARGERS

    if services.ocpp is None or services.sites is None:
        click.echo("OCPP central system disabled (ocpp_enabled): no simulated chargers")
        return
    central_url = f"ws://127.0.0.1:{services.ocpp.port}/ocpp"
    for seed, (charge_point_id, version) in enumerate(CHARGERS.items()):
        charger = SimulatedCharger(
            charge_point_id,
            central_url,
            version=version,
            max_power_kw=services.registry.get(charge_point_id).rated_power_kw or 11.0,
            meter_interval_s=DEMO_METER_INTERVAL_S,
            auto_sessions=True,
            seed=seed,
        )
        for work in (charger.run(), _first_ev(charger)):
            task = asyncio.create_task(work, name=f"demo-charger-{charge_point_id}")
            stack.push_async_callback(cancel_and_wait, task)
    await services.sites.set_limit(CARPORT, CARPORT_LIMIT_KW)
    click.echo(
        f"OCPP central system on ws://{services.settings.host}:{services.ocpp.port}/ocpp/{{id}}:"
        f" simulated chargers {', '.join(f'{k} ({v})' for k, v in CHARGERS.items())} share a"
        f" {CARPORT_LIMIT_KW:g} kW limit (site {CARPORT!r}); sessions at"
        " /api/v1/devices/evse-1/sessions"
    )


async def _demo_key(services: Services) -> None:
    """Make an operator key for the dashboard and print it."""
    _, token = services.keys.create("demo", Role.OPERATOR)
    state = "on" if services.settings.auth_enabled else "off on loopback, so it is not needed"
    click.echo(f"Demo API key (operator): {token}  (authentication {state})")


async def _demo_twin(services: Services) -> None:
    """Train forecasters on the fed devices' history and scan the household meter, in which
    the history has a stuck stretch: a forecast and an anomaly within a minute."""
    from derim.twin.service import TrainRequest

    request = TrainRequest(days=61, models=list(DEMO_MODELS))
    for device_id in DEMO_FORECASTS:
        job = await services.twin.start_training(device_id, request)
        click.echo(f"Training forecasters for {device_id} (job {job.job_id}); the forecast is at"
                   f" /api/v1/forecast/{device_id} in about a minute")  # fmt: skip
    end = datetime.now(UTC)
    try:
        found = await services.twin.anomalies(
            "load-house", "power_kw", end - timedelta(days=2), end
        )
    except DerimError as exc:  # the demo goes on without it
        click.echo(f"Anomaly scan of load-house failed: {exc}")
        return
    for anomaly in found:
        click.echo(f"Anomaly on load-house: {anomaly.kind} {anomaly.start:%H:%M}-"
                   f"{anomaly.end:%H:%M} UTC, {anomaly.reason}")  # fmt: skip


async def _first_ev(charger: SimulatedCharger) -> None:
    """Plug an EV in as soon as the charger is up, so the demo shows a session at once."""
    await charger.connected.wait()
    try:
        await charger.plug_in(1, id_tag="DEMO-EV", ev_max_kw=charger.max_power_kw)
    except DerimError as exc:
        click.echo(f"demo charger {charger.charge_point_id}: no first session: {exc}")


async def _demo_broker(settings: Settings, stack: contextlib.AsyncExitStack) -> str | None:
    """The broker for the demo's MQTT meters: the configured one, else a private Mosquitto on a
    free loopback port when the binary is installed, else None."""
    from derim.sim.broker import Mosquitto, mosquitto_binary

    if settings.mqtt_url is not None:
        return settings.mqtt_url
    if mosquitto_binary() is None:
        return None
    broker = Mosquitto(settings.data_dir / "mosquitto")
    await asyncio.to_thread(broker.start)
    stack.callback(broker.stop)
    return broker.url


main.add_command(keys)
main.add_command(remote)
main.add_command(twin)


@main.group()
def devices() -> None:
    """Manage the device registry."""


async def _with_registry(settings: Settings, action: Callable[[DeviceRegistry], Awaitable[T]]) -> T:
    registry = DeviceRegistry(settings.database_path)
    await registry.open()
    try:
        return await action(registry)
    finally:
        await registry.close()


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def devices_list(ctx: click.Context, as_json: bool) -> None:
    """List registered devices."""

    async def listing(registry: DeviceRegistry) -> list[DERDevice]:
        return registry.list()

    found = _run(_with_registry(_settings(ctx), listing))
    if as_json:
        click.echo(orjson.dumps([d.model_dump(mode="json") for d in found]).decode())
        return
    for device in found:
        rated = "" if device.rated_power_kw is None else f"{device.rated_power_kw} kW"
        click.echo(
            f"{device.id:<24} {device.device_type.value:<11} {device.protocol:<9} "
            f"{rated:<10} {device.name}"
        )


@devices.command("add")
@click.argument("device_id")
@click.option(
    "--type", "device_type", type=click.Choice([t.value for t in DeviceType]), default="generic"
)
@click.option("--name", default="")
@click.option("--rated-power-kw", type=float)
@click.option("--rated-energy-kwh", type=float)
@click.option("--group", "groups", multiple=True, help="Group membership (repeatable).")
@click.pass_context
def devices_add(
    ctx: click.Context,
    device_id: str,
    device_type: str,
    name: str,
    rated_power_kw: float | None,
    rated_energy_kwh: float | None,
    groups: tuple[str, ...],
) -> None:
    """Register a device that pushes its readings over HTTP."""
    try:
        device = DERDevice.model_validate(
            {
                "id": device_id,
                "device_type": device_type,
                "name": name,
                "rated_power_kw": rated_power_kw,
                "rated_energy_kwh": rated_energy_kwh,
                "groups": list(groups),
            }
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(_with_registry(_settings(ctx), lambda registry: registry.add(device)))
    _audit_cli(ctx, "device.create", device_id, device_type=device_type)
    click.echo(f"added {device_id}")


@devices.command("remove")
@click.argument("device_id")
@click.pass_context
def devices_remove(ctx: click.Context, device_id: str) -> None:
    """Remove a device from the registry (its telemetry stays)."""
    _run(_with_registry(_settings(ctx), lambda registry: registry.remove(device_id)))
    _audit_cli(ctx, "device.delete", device_id)
    click.echo(f"removed {device_id}")


def _audit_cli(ctx: click.Context, action: str, target: str, **detail: object) -> None:
    """Record a registry change made from the command line in the audit log."""
    audit = AuditLog(_settings(ctx).data_dir / "audit.db")
    audit.open_sync()
    try:
        audit.record_sync(
            AuditEntry(actor="cli", action=action, target=target, result="ok", detail=detail)
        )
    finally:
        audit.close()


def _csv_rows(handle: TextIO, device_id: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a telemetry CSV as reading dicts (empty cells left out) with their line numbers."""
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or "timestamp" not in reader.fieldnames:
        raise click.ClickException("the CSV needs a header with a 'timestamp' column")
    if device_id is None and "device_id" not in reader.fieldnames:
        raise click.ClickException("the CSV has no 'device_id' column; pass --device-id")
    for row in reader:
        reading: dict[str, Any] = {k: v for k, v in row.items() if k and v not in ("", None)}
        if device_id is not None:
            reading["device_id"] = device_id
        yield reader.line_num, reading


@main.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device-id", help="Device of every row (when the CSV has no device_id column).")
@click.pass_context
def import_csv(ctx: click.Context, csv_file: Path, device_id: str | None) -> None:
    """Import readings from a CSV (timestamp, device_id and canonical field columns)."""
    total = _run(_import(_settings(ctx), csv_file, device_id))
    click.echo(f"imported {total} readings from {csv_file}")


async def _import(settings: Settings, csv_file: Path, device_id: str | None) -> int:
    from derim.ingest import validate_readings

    imported = 0
    async with running_services(settings) as services:
        with (
            csv_file.open(newline="") as handle,
            tqdm(unit=" readings", unit_scale=True, disable=None) as bar,
        ):
            chunk: list[dict[str, Any]] = []
            lines: list[int] = []
            for line, reading in _csv_rows(handle, device_id):
                chunk.append(reading)
                lines.append(line)
                if len(chunk) == IMPORT_CHUNK:
                    imported += await _import_chunk(services, chunk, lines, validate_readings)
                    bar.update(len(chunk))
                    chunk, lines = [], []
            if chunk:
                imported += await _import_chunk(services, chunk, lines, validate_readings)
                bar.update(len(chunk))
    return imported


async def _import_chunk(
    services: Services, chunk: list[dict[str, Any]], lines: list[int], validate: Any
) -> int:
    try:
        records = validate(chunk, services.registry.find, location="row")
    except DerimError as exc:
        details = getattr(exc, "details", [])
        where = [
            f"line {lines[d['index']]}: {d['field']}: {d['message']}"
            for d in details
            if "index" in d
        ]
        message = "; ".join(where[:5]) or str(exc)
        raise DerimError(f"import stopped, nothing from this chunk stored: {message}") from exc
    await services.ingest(records)
    return len(records)


@main.command("export")
@click.argument("device_id")
@click.option("--start", type=click.DateTime(), help="Inclusive start (UTC); default 24 h ago.")
@click.option("--end", type=click.DateTime(), help="Exclusive end (UTC); default now.")
@click.option("--every", type=click.Choice([i.value for i in Interval]), help="Downsample.")
@click.option("--agg", type=click.Choice([a.value for a in Aggregation]), default="mean")
@click.option(
    "--output", "-o", type=click.File("w"), default="-", help="CSV file (default stdout)."
)
@click.pass_context
def export_csv(
    ctx: click.Context,
    device_id: str,
    start: datetime | None,
    end: datetime | None,
    every: str | None,
    agg: str,
    output: TextIO,
) -> None:
    """Export one device's readings as CSV, every page of the window."""
    end_at = (end or datetime.now(UTC)).replace(tzinfo=UTC)
    start_at = (start or end_at - timedelta(days=1)).replace(tzinfo=UTC)
    query = TelemetryQuery(
        device_id=device_id,
        start_ms=to_epoch_ms(start_at),
        end_ms=to_epoch_ms(end_at),
        every=Interval(every) if every else None,
        agg=Aggregation(agg),
        limit=50_000,
    )
    count = _run(_export(_settings(ctx), query, output))
    click.echo(f"exported {count} rows", err=True)


async def _export(settings: Settings, query: TelemetryQuery, output: TextIO) -> int:
    import dataclasses

    from derim.storage.base import decode_cursor

    count = 0
    writer: csv.DictWriter[str] | None = None
    async with running_services(settings) as services:
        services.registry.get(query.device_id)
        while True:
            page = await services.store.query(query)
            rows: list[dict[str, Any]] = orjson.loads(page.records_json)
            if rows and writer is None:
                writer = csv.DictWriter(output, fieldnames=list(rows[0]), lineterminator="\n")
                writer.writeheader()
            if writer is not None:
                writer.writerows(rows)
            count += len(rows)
            if page.next_cursor is None:
                return count
            query = dataclasses.replace(query, after_ms=decode_cursor(page.next_cursor))


if __name__ == "__main__":
    sys.exit(main())
