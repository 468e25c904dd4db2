"""Schemathesis against the app's own OpenAPI document, over real HTTP to a running server: no
generated input, valid or not, gets an undocumented 5xx, and every answer with a documented
status matches the schema documented for it.

The schema is the one ``create_app`` builds, so pytest can make one test per operation when
collecting (schemathesis' lazy ``from_fixture`` loader breaks on pytest 9.2: it sets the
removed ``Node._nodeid``), and ``test_schema_is_the_served_one`` checks that the server serves
exactly that document. Requests go over HTTP to an ``ApiServer`` whose lifespan is up
(storage, adapters, OCPP central system), not to the app in-process. Every operation is fuzzed:
nothing is excluded. Device connections in generated bodies are pinned to loopback
(``keep_on_loopback``) so that registering a fuzzed device never makes the server resolve names
or connect off the machine.
"""

from __future__ import annotations

import itertools
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
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from derim.api.app import create_app
from derim.config import load_settings
from derim.security.keys import KeyStore, Role

EXAMPLES = int(os.environ.get("DERIM_FUZZ_EXAMPLES", "20"))
"""Generated examples per operation in the fuzzing phase; the examples and coverage phases add
their own fixed cases (boundaries, wrong types, unexpected methods). Raise it for a long local
run; CI keeps the default so the file stays well under a minute on two cores."""

STATEFUL_SEQUENCES = 20
"""Sequences of up to ten linked calls, each on a fresh server (about 0.3 s to start and stop)."""

LOOPBACK_ONLY: dict[str, Any] = {"allowed_networks": ["127.0.0.0/8"]}
CLOSED_PORT = 9
"""The discard port on loopback: nothing listens there, so a fuzzed Modbus device fails fast."""


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings: reproducible (derandomized, no example database), no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def app_schema() -> dict[str, Any]:
    """The app's OpenAPI document as ``create_app`` builds it (nothing is started)."""
    return create_app(load_settings(data_dir=Path(tempfile.gettempdir()))).openapi()


DOCUMENT = app_schema()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
SCHEMA_FUZZING_ONLY = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}}),
)
"""For the smaller pass with authentication: generated examples only, no coverage cases."""


def no_undocumented_server_error(ctx: CheckContext, response: Response, case: Case) -> None:
    """``not_a_server_error``, except for a 5xx the operation documents (503 from a command to a
    device that cannot be reached is an answer, not a bug)."""
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code >= 500 and str(response.status_code) in documented:
        return
    not_a_server_error(ctx, response, case)


CHECKS = [no_undocumented_server_error, response_schema_conformance]


def keep_on_loopback(case: Case, scratch: Path) -> None:
    """Point a Modbus connection in the body at a closed loopback port or a missing serial
    device, so a fuzzed device never makes the server resolve a name, reach off the machine or
    open a real tty."""
    body = case.body if isinstance(case.body, dict) else {}
    connection = body.get("connection")
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
    """The API with authentication on and an admin token whose request budget never runs out
    (a 429 would hide what the fuzzer is after)."""
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


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for paths that must not exist (serial ports of fuzzed devices)."""
    return tmp_path_factory.mktemp("fuzz-scratch")


def test_schema_is_the_served_one(open_api: ApiServer) -> None:
    """The document the tests below are generated from is the one the server serves."""
    served = httpx.get(f"{open_api.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


@SCHEMA.parametrize()
@fuzz_settings(EXAMPLES)
def test_operation_without_auth(case: Case, open_api: ApiServer, scratch: Path) -> None:
    """Each operation, fed generated valid and invalid input and the coverage phase's boundary
    cases, answers without an undocumented 5xx and as its schema documents."""
    keep_on_loopback(case, scratch)
    case.call_and_validate(base_url=open_api.url, checks=CHECKS)


@SCHEMA_FUZZING_ONLY.parametrize()
@fuzz_settings(5)
def test_operation_with_admin_key(
    case: Case, secured_api: tuple[ApiServer, str], scratch: Path
) -> None:
    """With authentication on and an admin key, each operation takes the key (never 401 or
    403) and still answers without an undocumented 5xx and as documented."""
    server, token = secured_api
    keep_on_loopback(case, scratch)
    # Explicit headers override generated ones, so the fuzzer's own Authorization and
    # X-API-Key header parameters cannot displace the admin key.
    response = case.call_and_validate(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS
    )
    assert response.status_code not in (401, 403), response.text


def test_stateful_sequences_without_auth(tmp_path: Path, scratch: Path) -> None:
    """Chains inferred from the schema (register a device, then read, patch, control and delete
    it; create and revoke a key; set and clear a site limit), each run on a fresh server, never
    get an undocumented 5xx nor an answer outside their schema."""
    machine: Any = SCHEMA.as_state_machine()
    runs = itertools.count()

    class Workflow(machine):  # type: ignore[misc]
        # Each sequence gets its own server and data: the links it follows depend on what the
        # server answered, so state left by an earlier sequence would make Hypothesis see a
        # different sequence when it replays one (a "flaky strategy").
        def setup(self) -> None:
            self.server = ApiServer(tmp_path / f"run-{next(runs)}", **LOOPBACK_ONLY).start()

        def teardown(self) -> None:
            self.server.stop()

        def before_call(self, case: Case) -> None:
            keep_on_loopback(case, scratch)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": self.server.url}

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Workflow.run(settings=settings(fuzz_settings(STATEFUL_SEQUENCES), stateful_step_count=10))
