"""``derim remote``: ask a running server, through the typed client (``derim.client``).

Every other command works on the local data directory; these talk HTTP to the server at
``--url`` with the key in ``DERIM_API_KEY`` (or ``--api-key``, which ``ps`` shows), so they
work from any machine that can reach it. Output is an aligned table, or JSON with ``--format
json``. The client's errors (server unreachable, 401/403, 404, 422, ...) end the command with
one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from derim.api.streaming import EventMessage, GapMessage, TelemetryMessage
from derim.client import (
    ApiError,
    AuthError,
    BadRequestError,
    DerimClient,
    DerimClientError,
    ResourceNotFoundError,
    ServerUnreachableError,
    StreamMessage,
)
from derim.client.sync import DEFAULT_URL
from derim.models.command import CommandResult, CommandStatus, CommandType

F = TypeVar("F", bound=Callable[..., Any])
UNSUCCESSFUL = frozenset(
    {CommandStatus.REJECTED, CommandStatus.FAILED, CommandStatus.TIMED_OUT, CommandStatus.EXPIRED}
)
"""Final statuses that make ``derim remote command`` exit with status 1."""

pass_client = click.make_pass_decorator(DerimClient)


def output_format(function: F) -> F:
    """The ``--format table|json`` option, passed as ``output``."""
    option = click.option(
        "--format",
        "output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Aligned text for people, or JSON for programs.",
    )
    return option(function)


def explain(exc: DerimClientError, url: str) -> str:
    """One line saying what went wrong talking to the server at ``url``, and what to do."""
    if isinstance(exc, ServerUnreachableError):
        reason = str(exc.__cause__ or "") or str(exc)
        return (
            f"cannot reach the DERIM server at {url} ({reason}); is it running? (--url, DERIM_URL)"
        )
    if isinstance(exc, AuthError) and exc.status == 401:
        return f"refused (401): {exc.detail}; pass --api-key or set DERIM_API_KEY"
    if isinstance(exc, AuthError):
        return f"refused (403): {exc.detail}"
    if isinstance(exc, ResourceNotFoundError):
        return f"not found: {exc.detail}"
    if isinstance(exc, BadRequestError):
        return exc.detail
    if isinstance(exc, ApiError):
        return f"the server answered {exc.status}: {exc.detail}"
    return str(exc)


class RemoteGroup(click.Group):
    """A group whose commands' client errors become a one-line ``click`` error (status 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DerimClientError as exc:
            client = ctx.find_object(DerimClient)
            url = client.base_url if client is not None else "?"
            raise click.ClickException(" ".join(explain(exc, url).split())) from exc


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


@click.group(cls=RemoteGroup)
@click.option(
    "--url",
    envvar="DERIM_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    callback=_check_url,
    help="The running DERIM server.",
)
@click.option(
    "--api-key",
    envvar="DERIM_API_KEY",
    show_envvar=True,
    help="A key from `derim keys create` (needed when the server has auth on). Prefer "
    "DERIM_API_KEY: an argument shows in `ps` to every user of the machine.",
)
@click.pass_context
def remote(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Ask a running server over its API: health, devices, readings, commands, live stream."""
    ctx.obj = ctx.with_resource(DerimClient(url, api_key=api_key or None))


def _text(value: object) -> str:
    """A table cell: ``-`` for nothing, ISO 8601 for instants, compact numbers."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:g}"
    return " ".join(str(value).split())


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers`` in left-aligned columns two spaces apart."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    for line in [list(headers), *cells]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def echo_json(value: object) -> None:
    """Print ``value`` (JSON-ready: dicts, lists, text, numbers) as indented JSON."""
    click.echo(json.dumps(value, indent=2))


def flatten(value: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of nested mappings; an empty mapping is ``None``."""
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            yield from flatten(item, f"{name}.")
        else:
            yield name, None if isinstance(item, Mapping) else item


@remote.command()
@output_format
@pass_client
def health(client: DerimClient, output: str) -> None:
    """Status, auth, storage, spool depth, ingest counters and grid links."""
    answer = client.health()
    if output == "json":
        echo_json(answer)
    else:
        echo_table(("item", "value"), flatten(answer))


@remote.command()
@click.option("--type", "device_type", help="Only devices of this type (meter, battery, ...).")
@click.option("--group", help="Only devices in this group.")
@output_format
@pass_client
def devices(client: DerimClient, device_type: str | None, group: str | None, output: str) -> None:
    """Registered devices with their protocol and connection state."""
    found = client.list_devices(device_type=device_type, group=group)
    if output == "json":
        echo_json([device.model_dump(mode="json") for device in found])
        return
    rows = [
        (
            device.id,
            device.device_type.value,
            device.protocol,
            None if device.status is None else device.status.state.value,
            None if device.status is None else device.status.last_seen,
        )
        for device in found
    ]
    echo_table(("id", "type", "protocol", "state", "last seen"), rows)


@remote.command()
@click.argument("device_id")
@output_format
@pass_client
def latest(client: DerimClient, device_id: str, output: str) -> None:
    """The newest stored reading of a device, field by field (canonical units)."""
    reading = client.latest(device_id)
    if output == "json":
        echo_json(reading)
    else:
        echo_table(("field", "value"), flatten(reading))


def _requested_at(record: CommandResult) -> datetime | None:
    return record.history[0][1] if record.history else None


def _setpoint(record: CommandResult) -> str | None:
    request = record.request
    return None if request.value is None else f"{request.value:g} {request.unit}"


@remote.command("command")
@click.argument("device_id")
@click.argument("command", metavar="COMMAND", type=click.Choice([c.value for c in CommandType]))
@click.option("--value", type=float, help="Setpoint in --unit (power: discharge positive).")
@click.option("--unit", default="kW", show_default=True, help="The value's unit (kW, %, ...).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow a command the device has not answered yet until its record is final.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Longest wait for the final record (s).",
)
@output_format
@pass_client
def send_command(
    client: DerimClient,
    device_id: str,
    command: str,
    value: float | None,
    unit: str,
    wait: bool,
    timeout_s: float,
    output: str,
) -> None:
    """Send COMMAND (set_active_power, set_power_limit, battery_charge, connect, ...) to
    DEVICE_ID through the control API and print its record.

    Exits with status 1 when the command ended rejected, failed, timed out or expired (a device
    that refuses at once is an error line from the server).
    """
    request: dict[str, Any] = {"command": command, "unit": unit}
    if value is not None:
        request["value"] = value
    record = client.send_command(device_id, request)
    if wait and not record.is_final:
        record = client.wait_for_command(str(record.command_id), timeout_s=timeout_s)
    if output == "json":
        echo_json(record.model_dump(mode="json"))
    else:
        rows = [
            ("command_id", record.command_id),
            ("device", record.device_id),
            ("command", record.request.command.value),
            ("value", _setpoint(record)),
            ("status", record.status.value),
            ("message", record.message or None),
        ]
        echo_table(("item", "value"), rows)
    if record.status in UNSUCCESSFUL:
        click.get_current_context().exit(1)


@remote.command()
@click.argument("device_id")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many."
)
@output_format
@pass_client
def commands(client: DerimClient, device_id: str, limit: int, output: str) -> None:
    """A device's command records, newest first."""
    records = client.device_commands(device_id, limit=limit)
    if output == "json":
        echo_json([record.model_dump(mode="json") for record in records])
        return
    rows = [
        (
            record.command_id,
            _requested_at(record),
            record.request.command.value,
            _setpoint(record),
            record.request.source,
            record.status.value,
            record.message or None,
        )
        for record in records
    ]
    echo_table(("command_id", "requested", "command", "value", "source", "status", "message"), rows)


def _pairs(values: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    return " ".join(f"{key}={_text(value)}" for key, value in values.items() if key not in skip)


def stream_lines(message: StreamMessage) -> list[str]:
    """A live message as text lines: one per reading, event or gap notice (none for others)."""
    if isinstance(message, TelemetryMessage):
        keys = ("timestamp", "device_id")
        return [
            f"{record.get('timestamp')}  telemetry  {record.get('device_id')}  "
            f"{_pairs(record, keys)}"
            for record in message.records
        ]
    if isinstance(message, EventMessage):
        return [
            f"{_text(message.at)}  event  {message.device_id}  {message.event.value}  "
            f"{_pairs(message.data)}"
        ]
    if isinstance(message, GapMessage):
        return [f"gap: {message.lost} messages lost (reading too slowly)"]
    return []


@remote.command()
@click.option("--device", "device_ids", multiple=True, help="Only this device (repeatable).")
@click.option(
    "--count", type=click.IntRange(min=1), default=10, show_default=True, help="Messages to print."
)
@output_format
@pass_client
def stream(client: DerimClient, device_ids: tuple[str, ...], count: int, output: str) -> None:
    """Print COUNT live messages (readings, events, gap notices) of the SSE stream, then stop.
    JSON output is one message per line."""
    printed = 0
    with client.stream(devices=device_ids) as live:
        for message in live:
            if output == "json":
                click.echo(message.model_dump_json())
            else:
                for line in stream_lines(message):
                    click.echo(line)
            printed += 1
            if printed == count:
                return
    raise click.ClickException(f"the server ended the stream after {printed} of {count} messages")
