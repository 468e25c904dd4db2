"""Tutorial: a protocol adapter for a PV inverter with a small JSON-over-HTTP interface.

The device (an invented one, standing for any gateway with a JSON status page) answers

- ``GET /status`` with ``{"ac_power_w": 3200, "grid_v": 231.4, "state": "running"}``: power in
  W, positive when exporting, voltage in V, state ``running``, ``stopped`` or ``error``;
- ``PUT /limit`` with ``{"percent": 50}`` (0-100, ``null`` clears the limit) by echoing the limit
  it now holds, or with 409 when it refuses.

``docs/tutorial-new-adapter.md`` walks through this file. Run it to poll a simulated device three
times: ``python examples/tutorial_adapter.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from derim.adapters.base import (
    PollingAdapter,
    PollSettings,
    canonical_reading,
    read_back_result,
)
from derim.adapters.manager import AdapterManager
from derim.errors import DeviceRejected, InvalidRequestError, ProtocolError, TransportError
from derim.models.command import CommandRequest, CommandResult, CommandType
from derim.models.device import DERDevice
from derim.models.telemetry import DERTelemetry, SolarTelemetry

STATES = {"running": "on", "stopped": "off", "error": "fault"}
"""The device's state words -> canonical ``OperatingState`` values."""


# --8<-- [start:connection]
class JsonHttpConnection(BaseModel):
    """Where the device's JSON interface is; joins ``Connection`` in ``derim.models.device``."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["jsonhttp"]
    url: str = Field(min_length=1, max_length=256, description="Base URL, http://host:port.")
    poll_interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between polls.")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Seconds one request may take.")


# --8<-- [end:connection]


# --8<-- [start:decode]
def decode_status(device_id: str, body: bytes) -> SolarTelemetry:
    """One canonical reading from a ``/status`` body; ``ProtocolError`` if it cannot be read.

    ``ac_power_w`` (W) becomes ``power_kw`` (kW), ``grid_v`` (V) ``voltage_v``, ``state`` the
    canonical operating state.
    """
    try:
        status = json.loads(body)
        values = {
            "power_kw": float(status["ac_power_w"]) / 1000,
            "voltage_v": None if status.get("grid_v") is None else float(status["grid_v"]),
            "state": STATES[status["state"]],
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtocolError(f"unreadable status {body[:80]!r}: {exc!r}") from exc
    reading = canonical_reading(SolarTelemetry, device_id, values)
    assert isinstance(reading, SolarTelemetry)
    return reading


# --8<-- [end:decode]


# --8<-- [start:reading]
class JsonHttpAdapter(PollingAdapter):
    """Polls ``/status`` and carries out power limits through ``/limit``."""

    protocol: ClassVar[str] = "jsonhttp"

    def __init__(
        self,
        device_id: str,
        url: str,
        settings: PollSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(device_id, settings)
        self._url = url
        self.transport = transport
        """The HTTP transport seam: None for the network, ``httpx.MockTransport`` in tests."""
        self._client: httpx.AsyncClient | None = None

    async def connect(self) -> None:
        """Open the HTTP client (HTTP connects lazily, on the first request)."""
        self._client = httpx.AsyncClient(
            base_url=self._url, timeout=self.settings.timeout_s, transport=self.transport
        )

    async def disconnect(self) -> None:
        """Close the HTTP client, if open."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read_once(self) -> Sequence[DERTelemetry]:
        """One ``GET /status``, decoded."""
        response = await self._request("GET", "/status")
        if response.status_code != 200:
            raise ProtocolError(f"/status answered {response.status_code}")
        return [decode_status(self.device_id, response.content)]

    # --8<-- [end:reading]

    # --8<-- [start:commands]
    def validate(self, command: CommandRequest) -> None:
        """Accept ``set_power_limit`` in % (0-100) and ``clear_power_limit``; nothing else."""
        if command.command is CommandType.CLEAR_POWER_LIMIT:
            return
        if command.command is not CommandType.SET_POWER_LIMIT:
            raise InvalidRequestError("command", f"{command.command.value} is not supported")
        if command.unit != "%" or command.value is None or not 0 <= command.value <= 100:
            raise InvalidRequestError("value", "a power limit is 0 to 100 %")

    async def send(self, command: CommandRequest) -> CommandResult:
        """Write the limit and check the device's echo: acknowledged only if it holds it."""
        self.validate(command)
        percent = command.value if command.command is CommandType.SET_POWER_LIMIT else None
        response = await self._request("PUT", "/limit", json={"percent": percent})
        if response.status_code == 409:
            raise DeviceRejected(f"the device refused the limit: {response.text[:200]}")
        if response.status_code != 200:
            raise ProtocolError(f"/limit answered {response.status_code}")
        try:
            held = response.json()["percent"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"unreadable /limit answer {response.text[:80]!r}") from exc
        return read_back_result(self.device_id, command, held == percent, f"device holds {held}")

    async def release(self) -> None:
        """Clear any power limit (the device's default is none)."""
        await self.send(CommandRequest(command=CommandType.CLEAR_POWER_LIMIT))

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; network failures and timeouts become ``TransportError``."""
        if self._client is None:
            await self.connect()
            assert self._client is not None
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{self._url}{path}: {exc!r}") from exc


# --8<-- [end:commands]


# --8<-- [start:factory]
def build_adapter(manager: AdapterManager, device: DERDevice) -> PollingAdapter:
    """The ``FACTORIES["jsonhttp"]`` entry: an adapter for ``device`` (the manager is unused
    here; Modbus uses it to share one connection between devices)."""
    connection = device.connection
    if not isinstance(connection, JsonHttpConnection):
        raise InvalidRequestError("connection", "a jsonhttp device needs a url")
    settings = PollSettings(interval_s=connection.poll_interval_s, timeout_s=connection.timeout_s)
    return JsonHttpAdapter(device.id, connection.url, settings)


# --8<-- [end:factory]


def simulated_device() -> httpx.MockTransport:
    """An in-process stand-in for the device: 3.2 kW, honouring and echoing limits."""
    limit: dict[str, float | None] = {"percent": None}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status":
            scale = 1.0 if limit["percent"] is None else limit["percent"] / 100
            return httpx.Response(
                200, json={"ac_power_w": 3200 * scale, "grid_v": 231.4, "state": "running"}
            )
        if request.url.path == "/limit" and request.method == "PUT":
            limit["percent"] = json.loads(request.content)["percent"]
            return httpx.Response(200, json=limit)
        return httpx.Response(404)

    return httpx.MockTransport(handle)


async def main() -> None:
    """Poll the simulated device, limit it to 50 %, poll again; print what DERIM would store."""
    adapter = JsonHttpAdapter("pv-json-1", "http://device.invalid", transport=simulated_device())

    async def publish(records: Sequence[DERTelemetry]) -> None:
        for record in records:
            print(record.model_dump_json(exclude_none=True))

    await adapter.poll(publish)
    limit = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=50, unit="%")
    result = await adapter.send(limit)
    print(f"set_power_limit 50 %: {result.status.value}")
    await adapter.poll(publish)
    await adapter.release()
    await adapter.poll(publish)
    await adapter.aclose()


if __name__ == "__main__":
    asyncio.run(main())
