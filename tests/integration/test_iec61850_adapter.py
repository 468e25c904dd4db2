"""The IEC 61850 adapter against a real MMS server (``iec61850.IedServer``) loaded from the SCL
file in tests/fixtures/iec61850, on a loopback port: polling into canonical telemetry, setpoint
writes confirmed by read-back, refusals, and outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import httpx
import iec61850
import pytest
from api_server import ApiServer

from async_helpers import Sink, until, until_async
from derim.adapters.base import Backoff, ConnectionState, DeviceStatus, PollSettings
from derim.adapters.iec61850 import load_profile_text, shipped_profile
from derim.adapters.iec61850.adapter import Iec61850Adapter
from derim.adapters.iec61850.client import MmsLink
from derim.config import load_settings
from derim.errors import DeviceRejected, InvalidRequestError, TransportError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType, OperatingState, Quality
from derim.models.device import DERDevice, Iec61850Connection
from derim.models.telemetry import BatteryTelemetry
from derim.services import Services, running_services

SCL = Path(__file__).parents[1] / "fixtures" / "iec61850" / "der_battery.icd"
SHIPPED = files("derim.adapters.iec61850").joinpath("profiles", "generic_der_battery.yaml")
IED = "BESS1"
LIMIT, ENABLE = "DER/DRCC1.WMaxSpt.setVal", "DER/DRCC1.DEREna.setVal"
"""Setpoints written with an MMS Write."""
POWER = "DER/ZINV1.OutWSet"
"""The active power setpoint (APC), operated; the IED shows the value in ``mxVal.f``."""
FAST = PollSettings(interval_s=0.05, timeout_s=1.0, backoff=Backoff(initial_s=0.05, max_s=0.2))


class Ied:
    """The fixture IED served on a loopback port that survives ``stop()`` / ``start()``.

    Writes to (or operations of) a setpoint in ``refused`` are answered with
    ``ObjectValueInvalid`` (or AddCause ``BlockedByProcess``); those of one in ``ignored`` are
    accepted but not carried out (the write callback returns False; ``mxVal`` stays). An
    operated value shows in ``mxVal`` ``lag_s`` later, rounded to ``step``.
    """

    def __init__(self) -> None:
        self.port = 0
        self.refused: set[str] = set()
        self.ignored: set[str] = set()
        self.lag_s = 0.0
        """How long after an operation its value shows in ``mxVal``."""
        self.step = 0.0
        """What ``mxVal`` is rounded to (W; 0: not rounded)."""
        self.writes: list[tuple[str, object]] = []
        self.values: dict[str, float | int] = {
            "DER/MMXU1.TotW.mag.f": 2500.0,
            "DER/MMXU1.TotVAr.mag.f": -400.0,
            "DER/MMXU1.Hz.mag.f": 50.02,
            "DER/MMXU1.PhV.phsA.cVal.mag.f": 231.5,
            "DER/MMXU1.A.phsA.cVal.mag.f": 10.75,
            "DER/ZBAT1.SoC.mag.f": 55.5,
            "DER/LLN0.Beh.stVal": 1,
        }
        self._server: iec61850.IedServer | None = None
        self._loop = asyncio.get_running_loop()

    async def start(self) -> Ied:
        server = iec61850.IedServer.from_scl(SCL, ied_name=IED)
        server.bind(f"127.0.0.1:{self.port}")
        for path in (LIMIT, ENABLE):
            server.on_write(path, self._on_write)
        server.on_control(POWER, ctl_model="direct-normal", operate=self._on_operate)
        await server.start()
        self._server = server
        self.port = int(server.bound_addr.rsplit(":", 1)[1])
        for path, value in self.values.items():
            self.set(path, value)
        return self

    def set(self, path: str, value: float | int) -> None:
        """Change a value the IED serves (kept across restarts)."""
        assert self._server is not None
        self.values[path] = value
        if isinstance(value, float):
            self._server.update_float32(path, value)
        else:
            self._server.update_int32(path, value)

    def _on_write(self, path: str, value: object) -> bool:
        self.writes.append((path, value))
        if path in self.refused:
            error = iec61850.IedDataAccessError("setpoint refused")
            error.code = "ObjectValueInvalid"  # type: ignore[attr-defined]
            raise error
        return path not in self.ignored

    def _on_operate(self, path: str, value: object, _action: object) -> None:
        self.writes.append((path, value))
        if path in self.refused:
            error = iec61850.IedControlError("setpoint refused")
            error.add_cause = "BlockedByProcess"  # type: ignore[attr-defined]
            raise error
        if path in self.ignored or not isinstance(value, float):
            return
        shown = round(value / self.step) * self.step if self.step else value
        if self.lag_s:
            loop = self._loop
            loop.call_soon_threadsafe(
                loop.call_later, self.lag_s, self.set, f"{path}.mxVal.f", shown
            )
        else:
            self.set(f"{path}.mxVal.f", shown)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


@pytest.fixture
async def ied() -> AsyncIterator[Ied]:
    server = await Ied().start()
    yield server
    await server.stop()


@pytest.fixture
async def adapter(ied: Ied) -> AsyncIterator[Iec61850Adapter]:
    link = MmsLink("127.0.0.1", ied.port, timeout_s=1.0)
    device = Iec61850Adapter("bess-1", shipped_profile("generic_der_battery"), link, IED, FAST)
    yield device
    await device.aclose()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def command(kind: CommandType, value: float | None = None) -> CommandRequest:
    return CommandRequest(command=kind, value=value)


async def test_logical_node_data_is_polled_into_canonical_telemetry(
    adapter: Iec61850Adapter,
) -> None:
    """MMXU, ZBAT and LLN0.Beh values arrive scaled (W -> kW) with a good quality."""
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    await until(lambda: len(sink.records) >= 1)
    await stop(task)
    record = sink.records[0]
    assert isinstance(record, BatteryTelemetry)
    assert record.power_kw == pytest.approx(2.5)
    assert record.reactive_power_kvar == pytest.approx(-0.4)
    assert record.frequency_hz == pytest.approx(50.02)
    assert record.voltage_v == pytest.approx(231.5)
    assert record.current_a == pytest.approx(10.75)
    assert record.soc_percent == pytest.approx(55.5)
    assert record.state is OperatingState.ON
    assert record.quality is Quality.GOOD
    assert adapter.status.state is ConnectionState.ONLINE


async def test_unmapped_behaviour_reads_unknown_and_degrades(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """A Beh ordinal the profile does not map keeps the reading, as unknown and questionable."""
    ied.set("DER/LLN0.Beh.stVal", 9)
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    await until(lambda: len(sink.records) >= 1)
    await stop(task)
    assert sink.records[0].state is OperatingState.UNKNOWN
    assert sink.records[0].quality is Quality.QUESTIONABLE
    assert adapter.status.state is ConnectionState.DEGRADED


async def test_setpoints_are_written_and_read_back(adapter: Iec61850Adapter, ied: Ied) -> None:
    """A power limit in kW is written in W; a bool choice writes true; both confirmed."""
    await adapter.connect()
    limit = await adapter.send(command(CommandType.SET_POWER_LIMIT, 3.5))
    assert limit.status is CommandStatus.ACKNOWLEDGED, limit.message
    enable = await adapter.send(command(CommandType.CONNECT))
    assert enable.status is CommandStatus.ACKNOWLEDGED, enable.message
    assert ied.writes == [(LIMIT, 3500), (ENABLE, True)]


async def test_operated_setpoint_is_confirmed_by_its_measured_value(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """An APC setpoint is operated with ctlVal in W and acknowledged once mxVal shows it."""
    await adapter.connect()
    result = await adapter.send(command(CommandType.SET_ACTIVE_POWER, -2.25))
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert ied.writes == [(POWER, -2250.0)]
    assert ied.values[f"{POWER}.mxVal.f"] == -2250.0


async def test_operated_setpoint_that_shows_late_is_acknowledged(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """An IED that updates mxVal 0.3 s after the operation (within timeout_s, 1 s) is read
    back again until it shows the value, and the command is acknowledged."""
    ied.lag_s = 0.3
    await adapter.connect()
    result = await adapter.send(command(CommandType.SET_ACTIVE_POWER, 2.0))
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert ied.values[f"{POWER}.mxVal.f"] == 2000.0


async def test_rounded_read_back_is_acknowledged_within_the_profiles_tolerance(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """An IED that rounds mxVal to 10 W confirms 1.234 kW for a setpoint with a 0.005 kW
    tolerance; the shipped profile (no tolerance) reports the same echo as not carried out."""
    ied.step = 10.0
    text = SHIPPED.read_text().replace("max: 5.0\n", "max: 5.0\n    tolerance: 0.005\n")
    link = MmsLink("127.0.0.1", ied.port, timeout_s=1.0)
    lenient = Iec61850Adapter("bess-1", load_profile_text(text), link, IED, FAST)
    try:
        await lenient.connect()
        rounded = await lenient.send(command(CommandType.SET_ACTIVE_POWER, 1.234))
    finally:
        await lenient.aclose()
    await adapter.connect()
    strict = await adapter.send(command(CommandType.SET_ACTIVE_POWER, 1.234))
    assert rounded.status is CommandStatus.ACKNOWLEDGED, rounded.message
    assert strict.status is CommandStatus.FAILED
    assert "sent 1234.0, IED reads back 1230.0" in strict.message


async def test_write_the_ied_does_not_keep_is_failed_not_acknowledged(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """A write accepted on the wire but not stored (callback returns False) fails read-back."""
    ied.ignored.add(LIMIT)
    await adapter.connect()
    result = await adapter.send(command(CommandType.SET_POWER_LIMIT, 2.0))
    assert result.status is CommandStatus.FAILED
    assert "sent 2000, IED reads back 0" in result.message


async def test_operation_the_ied_does_not_carry_out_is_failed(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """An operation answered positively whose value never shows in mxVal is not acknowledged."""
    ied.ignored.add(POWER)
    await adapter.connect()
    result = await adapter.send(command(CommandType.SET_ACTIVE_POWER, 1.0))
    assert result.status is CommandStatus.FAILED
    assert "sent 1000.0, IED reads back 0.0" in result.message


async def test_refused_write_raises_device_rejected(adapter: Iec61850Adapter, ied: Ied) -> None:
    """A DataAccessError answer to a write is DeviceRejected, naming the IED's reason."""
    ied.refused.add(LIMIT)
    await adapter.connect()
    with pytest.raises(DeviceRejected, match="ObjectValueInvalid"):
        await adapter.send(command(CommandType.SET_POWER_LIMIT, 1.0))


async def test_refused_operation_raises_device_rejected(adapter: Iec61850Adapter, ied: Ied) -> None:
    """A negative control response is DeviceRejected, never acknowledged."""
    ied.refused.add(POWER)
    await adapter.connect()
    with pytest.raises(DeviceRejected, match=r"operate BESS1DER/ZINV1\.OutWSet: refused by"):
        await adapter.send(command(CommandType.SET_ACTIVE_POWER, 1.0))
    assert ied.writes == [(POWER, 1000.0)]


async def test_out_of_range_setpoint_never_reaches_the_ied(
    adapter: Iec61850Adapter, ied: Ied
) -> None:
    """A value beyond the profile's limit, or in the wrong unit, is refused before sending."""
    await adapter.connect()
    with pytest.raises(InvalidRequestError, match=r"maximum 5\.0"):
        await adapter.send(command(CommandType.SET_ACTIVE_POWER, 6.0))
    with pytest.raises(InvalidRequestError, match="in kW"):
        adapter.validate(CommandRequest(command=CommandType.SET_POWER_LIMIT, value=50, unit="%"))
    assert ied.writes == []


async def test_unreachable_ied_is_a_transport_error() -> None:
    """Connecting to a port nobody listens on raises TransportError (retryable)."""
    ied = await Ied().start()
    port = ied.port
    await ied.stop()
    link = MmsLink("127.0.0.1", port, timeout_s=0.5)
    with pytest.raises(TransportError, match="connect"):
        await link.connect()


@pytest.fixture
async def services(tmp_path: Path, ied: Ied) -> AsyncIterator[Services]:
    """The whole core with the IED registered as a battery polled every 0.1 s."""
    device = DERDevice(
        id="bess-1",
        device_type=DeviceType.BATTERY,
        rated_power_kw=10.0,
        connection=Iec61850Connection(
            protocol="iec61850",
            host="127.0.0.1",
            port=ied.port,
            ied_name=IED,
            profile="generic_der_battery",
            poll_interval_s=0.1,
            timeout_s=1.0,
        ),
    )
    settings = load_settings(data_dir=tmp_path, devices=[device], control_wait_s=5.0)
    async with running_services(settings) as running:
        yield running


async def stored(services: Services, power_kw: float) -> None:
    """Wait until the store's latest reading of the IED holds ``power_kw``."""

    async def holds() -> bool:
        latest = await services.store.latest(["bess-1"])
        return latest.get("bess-1", {}).get("power_kw") == pytest.approx(power_kw)

    await until_async(holds)


def polled(services: Services) -> DeviceStatus:
    status = services.adapters.status("bess-1")
    assert status is not None
    return status


async def test_core_stores_telemetry_and_sees_a_change_on_the_ied(
    services: Services, ied: Ied
) -> None:
    """Polled readings reach the store through the bus; a value changed on the IED is stored
    from a later poll."""
    await stored(services, 2.5)
    ied.set("DER/MMXU1.TotW.mag.f", -1200.0)
    await stored(services, -1.2)
    assert polled(services).state is ConnectionState.ONLINE


async def test_core_commands_end_acknowledged_or_rejected(services: Services, ied: Ied) -> None:
    """A command through the control layer is written and confirmed; one the IED refuses is
    recorded as rejected, never accepted."""
    status = polled(services)
    await until(lambda: status.state is ConnectionState.ONLINE)
    fleet = services.fleet_access()
    request = CommandRequest(command=CommandType.SET_ACTIVE_POWER, value=1.5, source="iec-test")
    result = await fleet.submit("bess-1", request)
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert ied.writes[-1] == (POWER, 1500.0)
    ied.refused.add(POWER)
    with pytest.raises(DeviceRejected):
        await fleet.submit("bess-1", request.model_copy(update={"value": 2.0}))
    (newest, *_) = await services.controller.store.for_device("bess-1", limit=1)
    assert newest.status is CommandStatus.REJECTED
    assert ied.writes[-1] == (POWER, 2000.0)


async def test_core_marks_a_stopped_ied_offline_and_recovers(services: Services, ied: Ied) -> None:
    """A stopped server makes the device offline; once it is back polling resumes by itself."""
    status = polled(services)
    await until(lambda: status.state is ConnectionState.ONLINE)
    await ied.stop()
    await until(lambda: status.state is ConnectionState.OFFLINE)
    polls = status.polls
    ied.values["DER/MMXU1.TotW.mag.f"] = 4000.0
    await ied.start()
    await until(lambda: status.state is ConnectionState.ONLINE and status.polls > polls)
    await stored(services, 4.0)


async def test_ied_registered_over_the_api_is_polled(api: ApiServer, ied: Ied) -> None:
    """POST /api/v1/devices with an iec61850 connection starts polling it (a profile for the
    wrong kind of device is a 422 naming connection.profile); its readings are served."""
    connection = {
        "protocol": "iec61850",
        "host": "127.0.0.1",
        "port": ied.port,
        "ied_name": IED,
        "profile": "generic_der_battery",
        "poll_interval_s": 0.05,
    }
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        wrong = {"id": "pv-61850", "device_type": "solar_pv", "connection": connection}
        refused = await client.post("/api/v1/devices", json=wrong)
        assert refused.status_code == 422
        assert any(e["field"] == "connection.profile" for e in refused.json()["errors"])
        device = {"id": "bess-api", "device_type": "battery", "connection": connection}
        created = await client.post("/api/v1/devices", json=device)
        assert created.status_code == 201, created.text

        async def has_power() -> bool:
            latest = await client.get("/api/v1/telemetry/bess-api/latest")
            return latest.status_code == 200 and latest.json().get("power_kw") == 2.5

        await until_async(has_power)
        assert (await client.delete("/api/v1/devices/bess-api")).status_code == 204


async def test_garbage_answers_never_crash_the_poller() -> None:
    """A peer that answers the association with junk leaves the device offline, loop alive."""

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(512):
            writer.write(b"\x03\x00\x00\x0b\x02\xf0\x80garbage")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = MmsLink("127.0.0.1", port, timeout_s=0.5)
    adapter = Iec61850Adapter("junk", shipped_profile("generic_der_battery"), link, IED, FAST)
    task = asyncio.create_task(adapter.run(Sink()))
    try:
        await until(lambda: adapter.status.consecutive_failures >= 3)
        assert adapter.status.state is ConnectionState.OFFLINE
        assert not task.done()
    finally:
        await stop(task)
        await adapter.aclose()
        server.close()
        await server.wait_closed()
