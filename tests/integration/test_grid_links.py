"""Grid links started from the settings by ``derim serve``'s core: running, shown in /health,
stopped with the core, and refusing to start half-configured."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from api_server import ApiServer

from derim.config import load_settings
from derim.errors import ConfigError
from derim.services import running_services

DNP3 = {"port": 0, "analog_inputs": [{"index": 0, "group": "site", "field": "power_kw"}]}


def test_configured_links_run_and_show_in_health(tmp_path: Path) -> None:
    """With ``dnp3`` and ``openadr`` blocks in the settings both links run inside the core, and
    /health lists each with its state: the VEN's own (``vtn unreachable`` while it retries a
    VTN that is not there yet) and the outstation's (``listening``, no master connected);
    without grid settings, no link runs."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        absent_vtn = f"http://127.0.0.1:{closed.getsockname()[1]}/OpenADR2/Simple/2.0b"
    openadr = {"vtn_url": absent_vtn, "ven_name": "derim-test",
               "programmes": [{"group": "site"}]}  # fmt: skip
    server = ApiServer(tmp_path / "with", dnp3=DNP3, openadr=openadr).start()
    try:
        links = _links_once_openadr_tried(server.url)
    finally:
        server.stop()
    assert links == {"openadr": "vtn unreachable", "dnp3": "listening"}
    plain = ApiServer(tmp_path / "without").start()
    try:
        assert httpx.get(f"{plain.url}/health", timeout=10).json()["grid_links"] == {}
    finally:
        plain.stop()


async def test_a_dnp3_port_in_use_stops_the_start(tmp_path: Path) -> None:
    """An outstation that cannot listen is a configuration error at start, not a link that
    silently never runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(data_dir=tmp_path, dnp3={**DNP3, "port": port})
        with pytest.raises(ConfigError, match="dnp3"):
            async with running_services(settings):
                pass


async def test_an_unreadable_sep2_certificate_stops_the_start(tmp_path: Path) -> None:
    """A 2030.5 client whose certificate cannot be read fails the start with its setting."""
    missing = tmp_path / "missing.pem"
    settings = load_settings(data_dir=tmp_path, sep2={
        "server_url": "https://127.0.0.1:8443", "client_cert": missing, "client_key": missing,
        "ca_cert": missing, "end_devices": [{"group": "site"}]})  # fmt: skip
    with pytest.raises(ConfigError, match="sep2"):
        async with running_services(settings):
            pass


def _links_once_openadr_tried(url: str, timeout_s: float = 15.0) -> dict[str, str]:
    """/health's grid links once the VEN has left ``registering`` (its first try done)."""
    deadline = time.monotonic() + timeout_s
    while True:
        links: dict[str, str] = httpx.get(f"{url}/health", timeout=10).json()["grid_links"]
        if links.get("openadr") != "registering" or time.monotonic() > deadline:
            return links
        time.sleep(0.05)
