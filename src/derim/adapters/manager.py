"""Runs the adapters of polled devices; devices can be added and removed while running.

Adapters are built by protocol through an explicit registry (``FACTORIES``). Devices behind one
Modbus TCP endpoint, or on one RTU serial line, share one connection and are polled by one task
(``LinePoller``); any other polled device runs as its own task. A device whose protocol has
no adapter here (pushed over HTTP, or a protocol still to come) is registered but not polled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from derim.adapters.base import DeviceStatus, PollingAdapter, PollSettings, Publish, StatusChanged
from derim.adapters.iec61850.profile import PROFILES as IEC61850_PROFILES
from derim.adapters.iec61850.profile import Profile as Iec61850Profile
from derim.adapters.line import LinePoller
from derim.adapters.modbus.adapter import ModbusAdapter
from derim.adapters.modbus.profile import PROFILES as MODBUS_PROFILES
from derim.adapters.modbus.profile import Profile as ModbusProfile
from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.adapters.yaml_model import ProfileLoader
from derim.errors import ConfigError, InvalidRequestError
from derim.models.device import DERDevice, Iec61850Connection, ModbusConnection

log = logging.getLogger(__name__)

P = TypeVar("P", ModbusProfile, Iec61850Profile)


class AdapterManager:
    """Starts, stops and reports on the adapters of the registered devices; each device's
    changes of connection state go to ``status_changed``."""

    def __init__(self, publish: Publish, status_changed: StatusChanged | None = None) -> None:
        self._publish = publish
        self._status_changed = status_changed
        self._adapters: dict[str, PollingAdapter] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lines: dict[str, LinePoller] = {}
        self._transports: dict[str, ModbusTransport] = {}

    def prepare(self, device: DERDevice) -> PollingAdapter | None:
        """Build (not start) the adapter of ``device``; ``InvalidRequestError`` if unusable."""
        factory = FACTORIES.get(device.protocol)
        return None if factory is None else factory(self, device)

    def start(self, device_id: str, adapter: PollingAdapter | None) -> None:
        """Start polling with an adapter from ``prepare`` (None: nothing to poll)."""
        if adapter is None:
            return
        adapter.status_changed = self._status_changed
        self._adapters[device_id] = adapter
        if adapter.line is None:
            self._tasks[device_id] = asyncio.create_task(
                adapter.run(self._publish), name=f"derim-poll-{device_id}"
            )
            return
        line = self._lines.get(adapter.line)
        if line is None:
            line = self._lines[adapter.line] = LinePoller(adapter.line, self._publish)
        line.add(adapter)

    async def stop(self, device_id: str) -> None:
        """Stop polling a device and close its connection if no other device uses it."""
        task = self._tasks.pop(device_id, None)
        adapter = self._adapters.pop(device_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        line = None if adapter is None or adapter.line is None else self._lines.get(adapter.line)
        if adapter is not None and line is not None:
            await line.remove(adapter)
            if line.empty:
                del self._lines[line.key]
        if adapter is not None and not self._shares_transport(adapter):
            await adapter.aclose()
            if isinstance(adapter, ModbusAdapter | SunSpecAdapter):
                self._transports.pop(adapter.transport.key, None)

    async def aclose(self) -> None:
        """Stop every adapter."""
        for device_id in list(self._adapters):
            await self.stop(device_id)

    def status(self, device_id: str) -> DeviceStatus | None:
        """Connection state of a polled device; None when the device is not polled."""
        adapter = self._adapters.get(device_id)
        return None if adapter is None else adapter.status

    def controller(self, device_id: str) -> PollingAdapter | None:
        """The running adapter that carries out a device's commands, if the device is polled."""
        return self._adapters.get(device_id)

    def transport(self, connection: ModbusConnection) -> ModbusTransport:
        """The shared connection to one Modbus TCP endpoint or RTU serial line."""
        if connection.serial_port is not None:
            transport = ModbusTransport.rtu(
                connection.serial_port,
                baudrate=connection.baudrate,
                parity=connection.parity,
                stopbits=connection.stopbits,
                bytesize=connection.bytesize,
                timeout_s=connection.timeout_s,
            )
        else:
            assert connection.host is not None  # guaranteed by ModbusConnection's validator
            transport = ModbusTransport.tcp(
                connection.host, connection.port, timeout_s=connection.timeout_s
            )
        return self._transports.setdefault(transport.key, transport)

    def _shares_transport(self, adapter: PollingAdapter) -> bool:
        if not isinstance(adapter, ModbusAdapter | SunSpecAdapter):
            return False
        return any(
            isinstance(other, ModbusAdapter | SunSpecAdapter)
            and other.transport is adapter.transport
            for other in self._adapters.values()
        )


def _modbus(manager: AdapterManager, device: DERDevice) -> PollingAdapter:
    connection = device.connection
    if not isinstance(connection, ModbusConnection):
        raise InvalidRequestError("connection", "a Modbus device needs host, port and unit_id")
    if connection.profile is None:
        raise InvalidRequestError("connection.profile", "a Modbus device needs a device profile")
    profile = _profile(device, connection.profile, MODBUS_PROFILES)
    settings = PollSettings(interval_s=connection.poll_interval_s, timeout_s=connection.timeout_s)
    transport = manager.transport(connection)
    return ModbusAdapter(device.id, profile, transport, connection.unit_id, settings)


def _sunspec(manager: AdapterManager, device: DERDevice) -> PollingAdapter:
    connection = device.connection
    if not isinstance(connection, ModbusConnection):
        raise InvalidRequestError("connection", "a SunSpec device needs host, port and unit_id")
    settings = PollSettings(interval_s=connection.poll_interval_s, timeout_s=connection.timeout_s)
    transport = manager.transport(connection)
    return SunSpecAdapter(
        device.id,
        device.device_type,
        transport,
        connection.unit_id,
        settings,
        rated_power_kw=device.rated_power_kw,
    )


def _iec61850(manager: AdapterManager, device: DERDevice) -> PollingAdapter:
    # Imported here: the MMS client's native library takes a while to load and only IEC 61850
    # devices need it.
    from derim.adapters.iec61850.adapter import Iec61850Adapter
    from derim.adapters.iec61850.client import MmsLink

    connection = device.connection
    if not isinstance(connection, Iec61850Connection):
        raise InvalidRequestError("connection", "an IEC 61850 device needs host, ied_name, profile")
    profile = _profile(device, connection.profile, IEC61850_PROFILES)
    settings = PollSettings(interval_s=connection.poll_interval_s, timeout_s=connection.timeout_s)
    link = MmsLink(connection.host, connection.port, connection.timeout_s)
    return Iec61850Adapter(device.id, profile, link, connection.ied_name, settings)


def _profile(device: DERDevice, name: str, profiles: ProfileLoader[P]) -> P:
    """The profile ``name`` of ``device``: a file when it ends in .yaml or .yml, else one DERIM
    ships; ``InvalidRequestError`` on ``connection.profile`` if it is unusable or describes
    another kind of device."""
    try:
        if name.endswith((".yaml", ".yml")):
            profile = profiles.file(Path(name))
        else:
            profile = profiles.shipped(name)
    except ConfigError as exc:
        raise InvalidRequestError("connection.profile", str(exc)) from exc
    if profile.device_type != device.device_type:
        raise InvalidRequestError(
            "connection.profile",
            f"profile {name!r} describes a {profile.device_type.value}, "
            f"not a {device.device_type.value}",
        )
    return profile


FACTORIES: dict[str, Callable[[AdapterManager, DERDevice], PollingAdapter]] = {
    "modbus": _modbus,
    "sunspec": _sunspec,
    "iec61850": _iec61850,
}
"""Adapter builders by protocol; MQTT and OCPP join as they land."""
