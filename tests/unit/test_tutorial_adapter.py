"""The tutorial's example adapter (examples/tutorial_adapter.py) keeps working against the
adapter contract and the manager's registry, so docs/tutorial-new-adapter.md cannot rot."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from derim.adapters import manager as manager_module
from derim.adapters.base import ConnectionState, PollingAdapter
from derim.adapters.manager import AdapterManager
from derim.errors import DeviceRejected, InvalidRequestError, ProtocolError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType, OperatingState
from derim.models.device import DERDevice
from derim.models.telemetry import DERTelemetry, SolarTelemetry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tutorial_adapter.py"


def _load_example() -> ModuleType:
    """The example file imported as module ``tutorial_adapter``."""
    spec = importlib.util.spec_from_file_location("tutorial_adapter", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tutorial = _load_example()


class Collected:
    """A ``Publish`` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[DERTelemetry] = []
        self.arrived = asyncio.Event()

    async def __call__(self, records: Sequence[DERTelemetry]) -> None:
        self.records.extend(records)
        self.arrived.set()


def fixed_device(status: int, body: bytes) -> httpx.MockTransport:
    """A device double that answers every request with ``status`` and ``body``."""
    return httpx.MockTransport(lambda _: httpx.Response(status, content=body))


def adapter_on(transport: httpx.MockTransport) -> PollingAdapter:
    """The example adapter talking to ``transport``."""
    adapter: PollingAdapter = tutorial.JsonHttpAdapter("pv-json-1", "http://dev", None, transport)
    return adapter


async def test_a_poll_publishes_the_status_in_canonical_units() -> None:
    """W becomes kW, the device's state word the canonical state, and the device is online."""
    adapter = adapter_on(tutorial.simulated_device())
    publish = Collected()
    await adapter.poll(publish)
    await adapter.aclose()
    (reading,) = publish.records
    assert isinstance(reading, SolarTelemetry)
    assert (reading.power_kw, reading.voltage_v) == (3.2, 231.4)
    assert reading.state is OperatingState.ON
    assert adapter.status.state is ConnectionState.ONLINE


async def test_an_unreadable_status_is_a_degraded_poll_not_a_crash() -> None:
    """A body without the power field makes the device degraded and publishes nothing."""
    adapter = adapter_on(fixed_device(200, b'{"state": "running"}'))
    publish = Collected()
    await adapter.poll(publish)
    await adapter.aclose()
    assert publish.records == []
    assert adapter.status.state is ConnectionState.DEGRADED
    assert "ac_power_w" in (adapter.status.last_error or "")


def test_decode_refuses_an_unknown_state_word() -> None:
    """A state the adapter has no canonical word for is a ProtocolError."""
    body = json.dumps({"ac_power_w": 10, "state": "dancing"}).encode()
    with pytest.raises(ProtocolError, match="dancing"):
        tutorial.decode_status("pv-json-1", body)


async def test_an_unreachable_device_goes_offline() -> None:
    """A connection error is a TransportError, so the poll marks the device offline."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    adapter = adapter_on(httpx.MockTransport(refuse))
    await adapter.poll(Collected())
    await adapter.aclose()
    assert adapter.status.state is ConnectionState.OFFLINE
    assert adapter.status.consecutive_failures == 1


async def test_an_acknowledged_limit_shows_in_the_next_poll() -> None:
    """set_power_limit 50 % is acknowledged on the device's echo and halves its power."""
    adapter = adapter_on(tutorial.simulated_device())
    command = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=50, unit="%")
    result = await adapter.send(command)
    publish = Collected()
    await adapter.poll(publish)
    await adapter.aclose()
    assert result.status is CommandStatus.ACKNOWLEDGED
    assert publish.records[0].power_kw == 1.6


async def test_a_refused_limit_is_device_rejected() -> None:
    """A 409 from the device becomes DeviceRejected (the API's 409)."""
    adapter = adapter_on(fixed_device(409, b"limit locked by installer"))
    command = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=50, unit="%")
    with pytest.raises(DeviceRejected, match="locked"):
        await adapter.send(command)
    await adapter.aclose()


def test_validate_refuses_commands_the_device_cannot_carry_out() -> None:
    """Only % power limits (0-100) and clearing them pass validation."""
    adapter = adapter_on(tutorial.simulated_device())
    adapter.validate(CommandRequest(command=CommandType.CLEAR_POWER_LIMIT))
    with pytest.raises(InvalidRequestError, match="0 to 100"):
        adapter.validate(CommandRequest(command=CommandType.SET_POWER_LIMIT, value=5, unit="kW"))
    with pytest.raises(InvalidRequestError, match="not supported"):
        adapter.validate(CommandRequest(command=CommandType.DISCONNECT))


async def test_registered_in_factories_the_manager_polls_and_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With FACTORIES["jsonhttp"] set, AdapterManager builds, runs, reports and stops it.

    The device is built with ``model_construct`` because ``JsonHttpConnection`` is not (yet) in
    the ``Connection`` union of ``derim.models.device``: the tutorial's step 1 adds it there.
    """
    monkeypatch.setitem(manager_module.FACTORIES, "jsonhttp", tutorial.build_adapter)
    connection = tutorial.JsonHttpConnection(
        protocol="jsonhttp", url="http://dev", poll_interval_s=0.01
    )
    device = DERDevice.model_construct(
        id="pv-json-1", device_type=DeviceType.SOLAR_PV, connection=connection
    )
    publish = Collected()
    manager = AdapterManager(publish)
    adapter = manager.prepare(device)
    assert isinstance(adapter, tutorial.JsonHttpAdapter)
    adapter.transport = tutorial.simulated_device()
    manager.start(device.id, adapter)
    await asyncio.wait_for(publish.arrived.wait(), timeout=10)
    status = manager.status(device.id)
    await manager.aclose()
    assert publish.records[0].device_id == "pv-json-1"
    assert status is not None
    assert status.state is ConnectionState.ONLINE
    assert manager.status(device.id) is None


def test_build_adapter_refuses_a_device_without_a_url() -> None:
    """The factory names the connection when the device is not a jsonhttp one."""
    device = DERDevice(id="meter-1", device_type=DeviceType.METER)
    with pytest.raises(InvalidRequestError, match="url"):
        tutorial.build_adapter(AdapterManager(Collected()), device)
