"""Start-up of the DERIM container, also runnable on any machine with DERIM installed.

``python deploy/entrypoint.py [--config FILE] [--wait-s S]`` validates the settings (YAML file
plus ``DERIM_*`` environment, exactly as ``derim serve`` reads them), waits up to ``--wait-s``
seconds (default 60) for the services they name (InfluxDB's ``/ping`` when
``storage_backend: influxdb``, a TCP connection to the broker when ``mqtt_url`` is set), then
runs ``derim serve`` in this process: no second interpreter start, and the server receives the
container's signals. Exit status 2: invalid settings; 3: a dependency did not answer in time.

``python deploy/entrypoint.py --health`` is the image's HEALTHCHECK: GET ``/health`` on the
configured port (0 when it answers 200, else 1).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from derim.config import Settings, load_settings
from derim.errors import ConfigError

RETRY_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 3.0
EXIT_BAD_SETTINGS = 2
EXIT_DEPENDENCY_DOWN = 3
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def influxdb_answers(url: str) -> bool:
    """Whether InfluxDB at ``url`` answers ``/ping`` with a 2xx status."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=PROBE_TIMEOUT_S) as reply:
            return 200 <= int(reply.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def broker_accepts(mqtt_url: str) -> bool:
    """Whether the broker of ``mqtt_url`` (``mqtt[s]://host[:port]``) accepts a TCP connection."""
    parts = urlsplit(mqtt_url)
    default_port = 8883 if parts.scheme == "mqtts" else 1883
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=PROBE_TIMEOUT_S
        ):
            return True
    except OSError:
        return False


def dependencies(settings: Settings) -> dict[str, tuple[str, str]]:
    """What the settings need reachable at start: name -> (kind, address)."""
    needed: dict[str, tuple[str, str]] = {}
    if settings.storage_backend == "influxdb":
        needed["InfluxDB"] = ("influxdb", settings.influxdb_url)
    if settings.mqtt_url is not None:
        needed["MQTT broker"] = ("mqtt", settings.mqtt_url)
    return needed


def wait_for(settings: Settings, wait_s: float) -> list[str]:
    """Wait (at most ``wait_s`` seconds in all) until every dependency answers; the names of
    those that still do not."""
    probes = {"influxdb": influxdb_answers, "mqtt": broker_accepts}
    pending = dependencies(settings)
    deadline = time.monotonic() + wait_s
    while pending:
        for name, (kind, address) in list(pending.items()):
            if probes[kind](address):
                print(f"derim-entrypoint: {name} at {address} answers", file=sys.stderr)
                del pending[name]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(RETRY_INTERVAL_S)
    return [f"{name} at {address}" for name, (_, address) in pending.items()]


def health_url(settings: Settings) -> str:
    """Where this instance's ``/health`` answers, seen from inside its own container."""
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.api_tls_cert and settings.api_tls_key else "http"
    return f"{scheme}://{host}:{settings.port}/health"


def check_health(settings: Settings) -> int:
    """0 when ``/health`` answers 200, else 1 (the certificate is not checked: same host)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            health_url(settings), timeout=PROBE_TIMEOUT_S, context=context
        ) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"derim-entrypoint: unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Validate, wait, serve; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML settings and fleet file.")
    parser.add_argument("--wait-s", type=float, default=60.0, help="Bound on waiting (s).")
    parser.add_argument("--health", action="store_true", help="Probe /health and exit.")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"derim-entrypoint: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if args.health:
        return check_health(settings)
    missing = wait_for(settings, max(0.0, args.wait_s))
    if missing:
        print(
            f"derim-entrypoint: no answer after {args.wait_s:g} s from {', '.join(missing)}",
            file=sys.stderr,
        )
        return EXIT_DEPENDENCY_DOWN
    from derim.cli import main as derim

    config = ["--config", str(args.config)] if args.config else []
    derim([*config, "serve"], prog_name="derim")  # exits with the server's status
    return 0


if __name__ == "__main__":
    sys.exit(main())
