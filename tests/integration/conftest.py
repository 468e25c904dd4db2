"""Fixtures for integration tests: real servers on loopback ports and pseudo-terminal pairs."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import ApiServer
from influxd import MISSING, InfluxServer, influxd_binary

from derim.sim.broker import MISSING as MISSING_MOSQUITTO
from derim.sim.broker import Mosquitto, mosquitto_binary

MISSING_SOCAT = "socat is not installed (Debian package `socat`); `make test` installs it"


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


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto broker for the session; tests use their own client ids and topics."""
    if mosquitto_binary() is None:
        pytest.fail(MISSING_MOSQUITTO, pytrace=False)
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto broker for one test, free to be restarted or killed."""
    if mosquitto_binary() is None:
        pytest.fail(MISSING_MOSQUITTO, pytrace=False)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    """The API over real HTTP with its data in a fresh temporary directory."""
    server = ApiServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (socat): (server end, client end)."""
    if shutil.which("socat") is None:
        pytest.fail(MISSING_SOCAT, pytrace=False)
    server_end, client_end = tmp_path / "ttyS", tmp_path / "ttyC"
    process = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={server_end}", f"pty,raw,echo=0,link={client_end}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if server_end.exists() and client_end.exists():
                break
            process.poll()
            assert process.returncode is None, "socat exited"
            time.sleep(0.02)
        yield str(server_end), str(client_end)
    finally:
        process.terminate()
        process.wait(timeout=10)
