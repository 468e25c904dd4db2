"""The Modbus adapter against a real pymodbus TCP server: decoding, scale factors, outages,
exceptions and control writes with read-back."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator

import pytest
from modbus_server import RegisterServer
from pymodbus.constants import ExcCodes

from async_helpers import Sink, until
from derim.adapters.base import Backoff, ConnectionState, PollSettings
from derim.adapters.modbus import shipped_profile
from derim.adapters.modbus.adapter import ModbusAdapter
from derim.adapters.modbus.transport import ModbusTransport
from derim.errors import DeviceRejected, InvalidRequestError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import OperatingState, Quality
from derim.models.telemetry import BatteryTelemetry

UNIT = 3
FAST = PollSettings(interval_s=0.02, timeout_s=1.0, backoff=Backoff(initial_s=0.05, max_s=0.1))


def f32(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def battery_image(server: RegisterServer, *, charge_raw: int = 500, charge_sf: int = 1) -> None:
    """Registers of the shipped generic battery profile (see its header comment)."""
    server.set(0, [0, 2500, 505, 0xFFFF, 251, 3, charge_raw, charge_sf & 0xFFFF, 0, 0])
    server.set(10, f32(50.0))


@pytest.fixture
async def server() -> AsyncIterator[RegisterServer]:
    srv = await RegisterServer(unit_id=UNIT, size=512).start()
    battery_image(srv)
    yield srv
    await srv.stop()


@pytest.fixture
async def adapter(server: RegisterServer) -> AsyncIterator[ModbusAdapter]:
    transport = ModbusTransport.tcp("127.0.0.1", server.port, timeout_s=1.0)
    device = ModbusAdapter("bat-1", shipped_profile("generic_battery"), transport, UNIT, FAST)
    yield device
    await device.aclose()


async def polling(adapter: ModbusAdapter, sink: Sink) -> asyncio.Task[None]:
    return asyncio.create_task(adapter.run(sink))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_reading_is_decoded_with_scale_factor_and_sentinels(adapter: ModbusAdapter) -> None:
    """Scaled values, the state enum and a not-implemented SoH come out as canonical fields."""
    sink = Sink()
    task = await polling(adapter, sink)
    await until(lambda: len(sink.records) >= 1)
    await stop(task)
    record = sink.records[0]
    assert isinstance(record, BatteryTelemetry)
    assert record.power_kw == pytest.approx(2.5)
    assert record.soc_percent == pytest.approx(50.5)
    assert record.soh_percent is None
    assert record.temperature_c == pytest.approx(25.1)
    assert record.state == "discharging"
    assert record.charge_rate_kw == pytest.approx(5.0)
    assert record.frequency_hz == pytest.approx(50.0)
    assert adapter.status.state is ConnectionState.ONLINE


async def test_scale_factor_is_reread_every_poll(
    adapter: ModbusAdapter, server: RegisterServer
) -> None:
    """Changing only the scale-factor register changes the next reading (never cached)."""
    sink = Sink()
    task = await polling(adapter, sink)
    await until(lambda: len(sink.records) >= 1)
    battery_image(server, charge_raw=500, charge_sf=0)
    await until(lambda: getattr(sink.records[-1], "charge_rate_kw", None) == pytest.approx(0.5))
    await stop(task)


async def test_dead_device_goes_offline_and_recovers(
    adapter: ModbusAdapter, server: RegisterServer
) -> None:
    """A device that stops answering is offline; when it is back, polling resumes by itself."""
    sink = Sink()
    task = await polling(adapter, sink)
    await until(lambda: len(sink.records) >= 1)
    await server.stop()
    await until(lambda: adapter.status.state is ConnectionState.OFFLINE)
    count = len(sink.records)
    await server.start()
    battery_image(server)
    await until(lambda: len(sink.records) > count)
    await stop(task)
    assert adapter.status.state is ConnectionState.ONLINE


async def test_modbus_exception_marks_the_device_degraded(
    adapter: ModbusAdapter, server: RegisterServer
) -> None:
    """Exception responses are a refusal by a live device: degraded, with the code in the error."""
    server.exception = ExcCodes.DEVICE_FAILURE
    sink = Sink()
    task = await polling(adapter, sink)
    await until(lambda: adapter.status.state is ConnectionState.DEGRADED)
    assert "exception 4" in (adapter.status.last_error or "")
    server.exception = None
    await until(lambda: len(sink.records) >= 1)
    await stop(task)
    assert adapter.status.state is ConnectionState.ONLINE


async def test_unmapped_state_code_degrades_the_reading_not_the_poll(
    adapter: ModbusAdapter, server: RegisterServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown state code still publishes the reading, as state unknown and questionable;
    the device shows degraded, the code is warned about once, and a known code heals it."""
    caplog.set_level(logging.DEBUG, logger="derim.adapters.modbus.adapter")
    server.set(5, [42])
    sink = Sink()
    task = await polling(adapter, sink)
    await until(lambda: len(sink.records) >= 3)
    assert adapter.status.state is ConnectionState.DEGRADED
    record = sink.records[-1]
    assert isinstance(record, BatteryTelemetry)
    assert record.state is OperatingState.UNKNOWN
    assert record.quality is Quality.QUESTIONABLE
    assert record.soc_percent == pytest.approx(50.5)
    reports = [r for r in caplog.records if "operating_state code 42" in r.getMessage()]
    assert [r.levelno for r in reports][:3] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    server.set(5, [2])
    await until(lambda: sink.records[-1].quality is Quality.GOOD)
    await stop(task)
    assert sink.records[-1].state is OperatingState.CHARGING
    assert adapter.status.state is ConnectionState.ONLINE


async def test_control_write_is_read_back(adapter: ModbusAdapter, server: RegisterServer) -> None:
    """A setpoint inside the limits is written and confirmed by reading it back."""
    await adapter.connect()
    command = CommandRequest(
        command=CommandType.SET_ACTIVE_POWER,
        value=-2.5,
        parameters={"point": "active_power_setpoint"},
    )
    result = await adapter.send(command)
    assert result.status is CommandStatus.ACKNOWLEDGED
    assert server.writes == [(300, [(-250) & 0xFFFF])]


async def test_control_outside_limits_is_refused_before_sending(
    adapter: ModbusAdapter, server: RegisterServer
) -> None:
    """A setpoint beyond the profile's limit never reaches the device."""
    await adapter.connect()
    command = CommandRequest(
        command=CommandType.SET_ACTIVE_POWER,
        value=6.0,
        parameters={"point": "active_power_setpoint"},
    )
    with pytest.raises(InvalidRequestError, match="maximum"):
        await adapter.send(command)
    assert server.writes == []


async def test_rejected_write_is_reported_as_rejected(
    adapter: ModbusAdapter, server: RegisterServer
) -> None:
    """A Modbus exception to a write is a DeviceRejected error, never 'accepted'."""
    await adapter.connect()
    server.exception = ExcCodes.ILLEGAL_VALUE
    command = CommandRequest(
        command=CommandType.SET_ACTIVE_POWER,
        value=1.0,
        parameters={"point": "active_power_setpoint"},
    )
    with pytest.raises(DeviceRejected, match="exception 3"):
        await adapter.send(command)


async def test_garbage_answers_never_crash_the_poller() -> None:
    """A peer that answers every request with junk bytes leaves the device offline, loop alive."""

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(260):
            writer.write(b"\x00\x01\xff\xff\x00\x03\x07\x83")
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(junk, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    transport = ModbusTransport.tcp("127.0.0.1", port, timeout_s=0.3)
    settings = PollSettings(interval_s=0.01, timeout_s=0.5, backoff=Backoff(0.01, 0.02))
    device = ModbusAdapter("junk", shipped_profile("generic_battery"), transport, UNIT, settings)
    sink = Sink()
    task = asyncio.create_task(device.run(sink))
    try:
        await until(lambda: device.status.consecutive_failures >= 3)
        assert not task.done(), "the poll loop survives undecodable answers"
        assert device.status.state in (ConnectionState.OFFLINE, ConnectionState.DEGRADED)
        assert sink.records == []
    finally:
        await stop(task)
        await device.aclose()
        listener.close()
        await listener.wait_closed()
