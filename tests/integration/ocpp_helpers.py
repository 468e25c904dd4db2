"""OCPP test helpers: a charger built on the ``ocpp`` library's charge-point side, driven by
the test, and the core services with the central system on a free port."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v201 import ChargePoint as ChargePoint201
from websockets.asyncio.client import ClientConnection

from derim.config import load_settings
from derim.services import Services, running_services
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait

SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}


@contextlib.asynccontextmanager
async def central(data_dir: Path, **settings: Any) -> AsyncIterator[Services]:
    """The core services with the OCPP central system listening on a free loopback port."""
    async with running_services(load_settings(data_dir=data_dir, **settings)) as services:
        assert services.ocpp is not None
        yield services


def url(services: Services, charge_point_id: str, scheme: str = "ws") -> str:
    """Where a charger connects."""
    assert services.ocpp is not None
    return f"{scheme}://127.0.0.1:{services.ocpp.port}/ocpp/{charge_point_id}"


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def charger(
    services: Services,
    charge_point_id: str,
    version: str = "1.6",
    handler_class: type[Any] | None = None,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Any]:
    """A connected library charge point (``.call(...)`` sends a CALL); ``handler_class`` may
    subclass the library's ChargePoint with ``@on`` handlers for CALLs from the central."""
    base = ChargePoint16 if version == "1.6" else ChargePoint201
    cls = handler_class or base
    address = url(services, charge_point_id, "wss" if tls else "ws")
    async with websockets.connect(
        address,
        subprotocols=[SUBPROTOCOL[version]],  # type: ignore[list-item]
        additional_headers=headers,
        ssl=tls,
        compression=None,
    ) as ws:
        point = cls(charge_point_id, ws, response_timeout=5)
        point.ws = ws
        task = asyncio.create_task(point.start())
        try:
            yield point
        finally:
            await cancel_and_wait(task)


@contextlib.asynccontextmanager
async def raw_socket(
    services: Services, charge_point_id: str, version: str = "1.6"
) -> AsyncIterator[ClientConnection]:
    """A bare WebSocket to the central, for frames no library would send."""
    async with websockets.connect(
        url(services, charge_point_id),
        subprotocols=[SUBPROTOCOL[version]],  # type: ignore[list-item]
    ) as ws:
        yield ws


@contextlib.asynccontextmanager
async def simulated(
    services: Services, charge_point_id: str, version: str = "1.6", **options: Any
) -> AsyncIterator[SimulatedCharger]:
    """A simulated charger connected (and booted) to the central."""
    assert services.ocpp is not None
    sim = SimulatedCharger(
        charge_point_id,
        f"ws://127.0.0.1:{services.ocpp.port}/ocpp",
        version=version,  # type: ignore[arg-type]
        meter_interval_s=options.pop("meter_interval_s", 0.1),
        reconnect_s=options.pop("reconnect_s", 0.2),
        **options,
    )
    task = asyncio.create_task(sim.run())
    try:
        await asyncio.wait_for(sim.connected.wait(), 10)
        yield sim
    finally:
        await cancel_and_wait(task)
