"""SunSpec control writes (models 704, 123, 124) against a real pymodbus server, read back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from modbus_server import RegisterServer
from pymodbus.constants import ExcCodes

from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec import build_image
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.adapters.sunspec.controls import locate
from derim.errors import DeviceRejected, InvalidRequestError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType

BASE = 40000
COMMON = {"Mn": "DERIM", "Md": "CTRL", "SN": "C0001", "Vr": "1.0", "DA": 1}
INVERTER = {"W": 3000, "W_SF": 0, "St": 4}
DER_CONTROLS = {"WMaxLimPctEna": 0, "WMaxLimPct": 1000, "WMaxLimPct_SF": -1, "PF_SF": -3}
DER_CONTROLS |= {"PFWInjEna": 0, "VarSetEna": 0, "VarSet_SF": 0, "VarSetPct_SF": -1, "WSet_SF": 0}
IMMEDIATE = {"Conn": 1, "WMaxLimPct": 100, "WMaxLimPct_SF": 0, "WMaxLim_Ena": 0}
IMMEDIATE |= {"OutPFSet": 1000, "OutPFSet_SF": -3, "OutPFSet_Ena": 0, "VArPct_SF": 0}
BATTERY = {"SoC": 50, "SoC_SF": 0, "W": 0, "W_SF": 0, "ChaSt": 6, "WHRtg": 135, "WHRtg_SF": 2}
BATTERY |= {"WChaRteMax": 50, "WChaDisChaMax_SF": 2}
STORAGE = {"WChaMax": 5000, "WChaMax_SF": 0, "StorCtl_Mod": 0, "InWRte": 0, "OutWRte": 0}
STORAGE |= {"InOutWRte_SF": -1}


def command(kind: CommandType, value: float | None = None, unit: str = "kW") -> CommandRequest:
    return CommandRequest(command=kind, value=value, unit=unit)


async def serve(models: Sequence[tuple[int, dict[str, Any]]]) -> RegisterServer:
    server = await RegisterServer(unit_id=1, size=BASE + 600).start()
    server.set(BASE, build_image(models))
    return server


async def connected(server: RegisterServer, kind: DeviceType) -> SunSpecAdapter:
    transport = ModbusTransport.tcp("127.0.0.1", server.port, timeout_s=1.0)
    adapter = SunSpecAdapter("dev-1", kind, transport, 1, rated_power_kw=5.0)
    await adapter.connect()
    return adapter


def held(server: RegisterServer, model_id: int, path: str) -> int:
    """The raw register of ``path`` in model ``model_id`` as the server now holds it."""
    registers = server.unit.registers
    assert registers is not None
    address = _model_address(registers, model_id)
    return registers[address + locate(model_id, path).offset]


def _model_address(registers: list[int], model_id: int) -> int:
    address = BASE + 2
    while registers[address] != 0xFFFF:
        if registers[address] == model_id:
            return address
        address += 2 + registers[address + 1]
    raise AssertionError(f"model {model_id} not served")


@pytest.fixture
async def pv_704() -> AsyncIterator[tuple[RegisterServer, SunSpecAdapter]]:
    server = await serve([(1, COMMON), (103, INVERTER), (123, IMMEDIATE), (704, DER_CONTROLS)])
    adapter = await connected(server, DeviceType.SOLAR_PV)
    yield server, adapter
    await adapter.aclose()
    await server.stop()


async def test_power_limit_prefers_model_704_and_is_read_back(
    pv_704: tuple[RegisterServer, SunSpecAdapter],
) -> None:
    """2 kW of a 5 kW rating is WMaxLimPct 40 % (raw 400 at SF -1), then enabled; 123 untouched."""
    server, adapter = pv_704
    result = await adapter.send(command(CommandType.SET_POWER_LIMIT, 2.0))
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert held(server, 704, "WMaxLimPct") == 400
    assert held(server, 704, "WMaxLimPctEna") == 1
    assert held(server, 123, "WMaxLim_Ena") == 0
    cleared = await adapter.send(command(CommandType.CLEAR_POWER_LIMIT))
    assert cleared.status is CommandStatus.ACKNOWLEDGED
    assert held(server, 704, "WMaxLimPctEna") == 0


async def test_power_factor_goes_to_the_injection_group_with_its_excitation(
    pv_704: tuple[RegisterServer, SunSpecAdapter],
) -> None:
    """-0.95 (under-excited) is PFWInj.PF 950 at PF_SF -3 with Ext 1, then PFWInjEna 1."""
    server, adapter = pv_704
    result = await adapter.send(command(CommandType.SET_POWER_FACTOR, -0.95, unit=""))
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert held(server, 704, "PFWInj.PF") == 950
    assert held(server, 704, "PFWInj.Ext") == 1
    assert held(server, 704, "PFWInjEna") == 1


async def test_reactive_power_in_kvar_sets_the_vars_mode(
    pv_704: tuple[RegisterServer, SunSpecAdapter],
) -> None:
    """-1.5 kvar is VarSet -1500 var (two's complement over two registers) in mode VARS (4)."""
    server, adapter = pv_704
    result = await adapter.send(command(CommandType.SET_REACTIVE_POWER, -1.5, unit="kvar"))
    assert result.status is CommandStatus.ACKNOWLEDGED, result.message
    assert held(server, 704, "VarSetMod") == 4
    registers = server.unit.registers
    assert registers is not None
    at = _model_address(registers, 704) + locate(704, "VarSet").offset
    assert (registers[at] << 16 | registers[at + 1]) == (-1500) & 0xFFFFFFFF


async def test_inverter_with_only_model_123_is_curtailed_there() -> None:
    """Without 704, the limit goes to 123; connect/disconnect always do."""
    server = await serve([(1, COMMON), (103, INVERTER), (123, IMMEDIATE)])
    adapter = await connected(server, DeviceType.SOLAR_PV)
    try:
        result = await adapter.send(command(CommandType.SET_POWER_LIMIT, 60, unit="%"))
        assert result.status is CommandStatus.ACKNOWLEDGED, result.message
        assert held(server, 123, "WMaxLimPct") == 60
        assert held(server, 123, "WMaxLim_Ena") == 1
        result = await adapter.send(command(CommandType.DISCONNECT))
        assert result.status is CommandStatus.ACKNOWLEDGED
        assert held(server, 123, "Conn") == 0
        with pytest.raises(InvalidRequestError, match="given in %"):
            adapter.validate(command(CommandType.SET_REACTIVE_POWER, 1.0, unit="kvar"))
    finally:
        await adapter.aclose()
        await server.stop()


async def test_battery_discharge_and_charge_use_storage_controls() -> None:
    """2.5 kW of WChaMax 5 kW discharges at OutWRte 50 % (raw 500 at SF -1) with the DISCHARGE
    bit; charging 1 kW sets InWRte 20 % and the CHARGE bit; 0 kW hands back to the device."""
    server = await serve([(1, COMMON), (802, BATTERY), (124, STORAGE)])
    adapter = await connected(server, DeviceType.BATTERY)
    try:
        discharge = command(CommandType.BATTERY_DISCHARGE, 2.5).normalized()
        result = await adapter.send(discharge)
        assert result.status is CommandStatus.ACKNOWLEDGED, result.message
        assert (held(server, 124, "OutWRte"), held(server, 124, "StorCtl_Mod")) == (500, 2)
        result = await adapter.send(command(CommandType.BATTERY_CHARGE, 1.0).normalized())
        assert (held(server, 124, "InWRte"), held(server, 124, "StorCtl_Mod")) == (200, 1)
        result = await adapter.send(command(CommandType.SET_ACTIVE_POWER, 0.0))
        assert held(server, 124, "StorCtl_Mod") == 0
        with pytest.raises(InvalidRequestError, match="WChaMax"):
            await adapter.send(command(CommandType.SET_ACTIVE_POWER, 6.0))
    finally:
        await adapter.aclose()
        await server.stop()


async def test_a_device_that_does_not_keep_the_write_fails_the_command() -> None:
    """A device that takes each write but then clears the register reads back differently:
    failed, never acknowledged, and the message names the point."""
    server = RegisterServer(unit_id=1, size=BASE + 600)
    unit = server.unit
    original = unit.handle

    async def forgetful(function_code: int, start: int, address: int, count: int,
                        current: list[int], values: Any) -> ExcCodes | None:  # fmt: skip
        answer = await original(function_code, start, address, count, current, values)
        if values is not None:
            unit.set(address, [0] * count)  # lands before the next request
        return answer

    unit.handle = forgetful  # type: ignore[method-assign]
    await server.start()
    server.set(BASE, build_image([(1, COMMON), (103, INVERTER), (704, DER_CONTROLS)]))
    adapter = await connected(server, DeviceType.SOLAR_PV)
    try:
        result = await adapter.send(command(CommandType.SET_POWER_LIMIT, 50, unit="%"))
        assert result.status is CommandStatus.FAILED, result.message
        assert "WMaxLimPct" in result.message
    finally:
        await adapter.aclose()
        await server.stop()


async def test_a_refused_write_raises_device_rejected(
    pv_704: tuple[RegisterServer, SunSpecAdapter],
) -> None:
    """A Modbus exception on the write is a refusal, not an acknowledgement."""
    server, adapter = pv_704
    registers = server.unit.registers
    assert registers is not None
    at = _model_address(registers, 704) + locate(704, "WMaxLimPct").offset
    server.unit.failing = [range(at, at + 1)]
    with pytest.raises(DeviceRejected, match="exception 4"):
        await adapter.send(command(CommandType.SET_POWER_LIMIT, 50, unit="%"))


async def test_commands_without_a_control_model_are_refused_before_sending() -> None:
    """A battery without 124 or 704 cannot take a setpoint: 422-style error, nothing written."""
    server = await serve([(1, COMMON), (802, BATTERY)])
    adapter = await connected(server, DeviceType.BATTERY)
    try:
        with pytest.raises(InvalidRequestError, match="model 124 or 704"):
            adapter.validate(command(CommandType.SET_ACTIVE_POWER, 1.0))
        assert server.writes == []
    finally:
        await adapter.aclose()
        await server.stop()
