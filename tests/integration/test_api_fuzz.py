"""Schemathesis against the app's own OpenAPI document, over real HTTP: no input the schema
allows (or almost allows) gets a 5xx, and every answer matches the schema it documents."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from api_server import ApiServer
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from derim.api.app import create_app
from derim.config import load_settings
from derim.security.keys import KeyStore, Role

CHECKS = [not_a_server_error, response_schema_conformance]
EXAMPLES = int(os.environ.get("DERIM_FUZZ_EXAMPLES", "15"))
"""Generated examples per operation in the fuzzing phase (the examples and coverage phases add
their own fixed cases); raise it for a longer local run."""

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

LOOPBACK_ONLY = {"allowed_networks": ["127.0.0.0/8"]}
CLOSED_PORT = 9
"""The discard port on loopback: nothing listens there, so a polled device fails fast."""


def keep_on_loopback(case: Case, scratch: Path) -> None:
    """Point any Modbus connection in the body at a closed loopback port or a missing serial
    device, so fuzzed devices never make the server resolve names, reach out or open ttys."""
    body = case.body if isinstance(case.body, dict) else None
    connection = body.get("connection") if body else None
    if not isinstance(connection, dict):
        return
    if isinstance(connection.get("host"), str):
        connection["host"] = "127.0.0.1"
        connection["port"] = CLOSED_PORT
    if isinstance(connection.get("serial_port"), str):
        connection["serial_port"] = str(scratch / "no-such-tty")


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API with authentication off (every caller is admin)."""
    server = ApiServer(tmp_path_factory.mktemp("fuzz-open"), **LOOPBACK_ONLY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secured_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    """The API with authentication on, and an admin token (request budget out of the way)."""
    data = tmp_path_factory.mktemp("fuzz-secured")
    store = KeyStore(data / "keys.db")
    store.open_sync()
    _, token = store.create("fuzz-admin", Role.ADMIN)
    store.close()
    server = ApiServer(
        data,
        auth_enabled=True,
        rate_limit_per_s=1_000_000,
        rate_limit_burst=1_000_000,
        **LOOPBACK_ONLY,
    ).start()
    yield server, token
    server.stop()


def app_schema() -> Any:
    """The app's OpenAPI document as ``create_app`` builds it (no services started)."""
    settings = load_settings(data_dir=Path(tempfile.gettempdir()), auth_enabled=False)
    return create_app(settings).openapi()


DOCUMENT = app_schema()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)


def test_schema_is_the_served_one(open_api: ApiServer) -> None:
    """The document the fuzzing below is generated from is the one the server serves."""
    assert httpx.get(f"{open_api.url}/openapi.json").json() == DOCUMENT


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_no_server_error_without_auth(
    case: Case, open_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each operation, fed generated valid and invalid input, answers below 500 and as its
    schema documents."""
    keep_on_loopback(case, tmp_path_factory.getbasetemp())
    case.call_and_validate(base_url=open_api.url, checks=CHECKS)
