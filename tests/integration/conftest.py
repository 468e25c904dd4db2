"""Fixtures for integration tests: real servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import ApiServer
from influxd import MISSING, InfluxServer, influxd_binary


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One ``influxd`` for the session; tests use their own databases in it."""
    if influxd_binary() is None:
        pytest.fail(MISSING, pytrace=False)
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    """The API over real HTTP with its data in a fresh temporary directory."""
    server = ApiServer(tmp_path).start()
    yield server
    server.stop()
