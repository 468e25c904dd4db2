"""Decoding SunSpec models (scale factors, sentinels, groups) and mapping them to canonical."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sunspec2.device

from derim.adapters.modbus import MISSING
from derim.adapters.sunspec import (
    DecodedBlock,
    GroupDef,
    available_model_ids,
    build_image,
    decode_model,
    device_info,
    model_definition,
    to_canonical,
    walk_models,
)
from derim.errors import ProtocolError
from derim.models.common import OperatingState
from derim.models.telemetry import BatteryTelemetry, SolarTelemetry

Data = dict[str, Any]
"""Raw point values of one model."""
COMMON: Data = {"Mn": "ACME", "Md": "PV-5000", "SN": "SN123", "Vr": "1.2.3", "DA": 1}
INVERTER: Data = {"A": 2065, "AphA": 688, "AphB": 690, "AphC": 687, "A_SF": -2}
INVERTER |= {"PhVphA": 2301, "PhVphB": 2299, "PhVphC": 2300, "V_SF": -1}
INVERTER |= {"W": 475, "W_SF": 1, "VAr": -120, "VAr_SF": 0, "Hz": 5001, "Hz_SF": -2}
INVERTER |= {"WH": 1234567, "WH_SF": 0, "DCW": 490, "DCW_SF": 1, "TmpCab": 415, "Tmp_SF": -1}
INVERTER |= {"St": 4, "Evt1": 0}
NAMEPLATE: Data = {"DERTyp": 4, "WRtg": 500, "WRtg_SF": 1, "WHRtg": 1000, "WHRtg_SF": 1}
CONTROLS: Data = {"Conn": 1, "WMaxLimPct": 750, "WMaxLimPct_SF": -1, "WMaxLim_Ena": 1}
MPPT: Data = {"DCW_SF": 0, "DCV_SF": -1, "N": 2, "module": [{"ID": 1, "DCW": 2400, "DCV": 3805}]}
MPPT["module"] += [{"ID": 2, "DCW": 2500, "DCV": 3790}]
DER_AC: Data = {"ACType": 2, "St": 1, "InvSt": 3, "ConnSt": 1, "W": 4750, "W_SF": 0, "Var": -12}
DER_AC |= {"Var_SF": 1, "PF": 99, "PF_SF": -2, "LNV": 2300, "LLV": 3984, "V_SF": -1, "Hz": 50010}
DER_AC |= {"Hz_SF": -3, "TotWhInj": 1234567, "TotWhAbs": 12, "TotWh_SF": 0, "AL1": 688}
DER_AC |= {"AL2": 690, "AL3": 687, "A_SF": -2, "TmpCab": 41, "Tmp_SF": 0}
STORAGE: Data = {"WHRtg": 100, "WHAvail": 55, "WH_SF": 2, "SoC": 552, "SoH": 981, "Pct_SF": -1}
BATTERY: Data = {"SoC": 61, "SoC_SF": 0, "SoH": 97, "SoH_SF": 0, "W": -2500, "W_SF": 0, "ChaSt": 4}
BATTERY |= {"WChaRteMax": 50, "WChaDisChaMax_SF": 2, "NCyc": 120, "Typ": 4}
DEVICE: list[tuple[int, Data]] = [
    (1, COMMON),
    (103, INVERTER),
    (120, NAMEPLATE),
    (123, CONTROLS),
    (160, MPPT),
]
DEVICE += [(701, DER_AC), (713, STORAGE), (802, BATTERY)]


def decode_all(models: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[int, DecodedBlock]:
    """Build an image of ``models`` at base 40000, walk it and decode every model."""
    image = {40000 + i: register for i, register in enumerate(build_image(models))}
    return {
        entry.model_id: decode_model(
            entry.model_id, [image[a] for a in range(entry.address, entry.end)]
        )
        for entry in walk_models(image, 40000)
    }


def model_registers(model_id: int, data: Mapping[str, Any]) -> list[int]:
    """The registers of one model (ID to last point) as pysunspec2 encodes ``data``."""
    return build_image([(model_id, data)])[2:-2]


def test_a_full_device_decodes_to_the_values_put_in() -> None:
    """1+103+120+123+160+701+713+802 decode with each scale factor applied."""
    models = decode_all(DEVICE)
    assert models[1]["Mn"] == "ACME"
    assert models[1]["SN"] == "SN123"
    inverter = models[103]
    assert inverter["W"] == pytest.approx(4750)
    assert inverter["PhVphA"] == pytest.approx(230.1)
    assert inverter["AphB"] == pytest.approx(6.9)
    assert inverter["Hz"] == pytest.approx(50.01)
    assert inverter["WH"] == pytest.approx(1234567)
    assert inverter["TmpCab"] == pytest.approx(41.5)
    assert inverter["St"] == 4
    assert inverter["Evt1"] == 0
    assert models[120]["WRtg"] == pytest.approx(5000)
    assert models[123]["WMaxLimPct"] == pytest.approx(75.0)
    modules = models[160]["module"]
    assert isinstance(modules, list)
    assert [m["DCW"] for m in modules] == [2400, 2500]
    assert modules[1]["DCV"] == pytest.approx(379.0)
    assert models[701]["Hz"] == pytest.approx(50.01)
    assert models[701]["Var"] == pytest.approx(-120)
    assert models[701]["TotWhInj"] == pytest.approx(1234567)
    assert models[713]["SoC"] == pytest.approx(55.2)
    assert models[713]["WHRtg"] == pytest.approx(10000)
    assert models[802]["W"] == pytest.approx(-2500)
    assert models[802]["WChaRteMax"] == pytest.approx(5000)


@pytest.mark.parametrize("model_id", [103, 701, 713, 802, 160, 705])
def test_decoding_agrees_with_pysunspec2(model_id: int) -> None:
    """Our decoder reads pysunspec2's own encoding back to pysunspec2's computed values."""
    data: dict[str, Any] = dict(dict(DEVICE).get(model_id, {}))
    if model_id == 705:
        data = {"NPt": 2, "NCrv": 1, "V_SF": -1, "DeptRef_SF": 0}
        data["Crv"] = [{"ActPt": 2, "Pt": [{"V": 950, "Var": 30}, {"V": 1050, "Var": -30}]}]
    theirs = sunspec2.device.Model(model_id=model_id, data=data).get_dict(computed=True)
    ours = decode_model(model_id, model_registers(model_id, data))

    def compare(mine: Any, reference: Any) -> None:
        if isinstance(reference, dict):
            for name, value in reference.items():
                if name in mine:
                    compare(mine[name], value)
        elif isinstance(reference, list):
            assert len(mine) == len(reference)
            for item, other in zip(mine, reference, strict=True):
                compare(item, other)
        elif reference is None:
            assert mine is MISSING
        else:
            assert mine == pytest.approx(reference)

    compare(ours, theirs)


def has_count_points(group: GroupDef) -> bool:
    """Whether ``group`` or a sub-group repeats as often as a count point says."""
    return any(isinstance(sub.count, str) or has_count_points(sub) for sub in group.groups)


SELF_SIZED = [
    m for m in sorted(available_model_ids()) if not has_count_points(model_definition(m).group)
]


@pytest.mark.parametrize("model_id", SELF_SIZED)
def test_unset_points_are_missing_as_in_pysunspec2(model_id: int) -> None:
    """A shipped model encoded by pysunspec2 without values decodes to MISSING where it has None."""
    theirs = sunspec2.device.Model(model_id=model_id, data={}).get_dict(computed=True)
    ours = decode_model(model_id, model_registers(model_id, {}))
    for name, value in theirs.items():
        if name in ours and not isinstance(value, list | dict):
            assert (ours[name] is MISSING) if value is None else ours[name] == value, name


def test_network_and_64_bit_types_decode() -> None:
    """eui48 (model 11), ipaddr, int64 and ipv6addr (test model 63001) read back as written."""
    mac = decode_model(11, model_registers(11, {"MAC": "00:11:22:AA:BB:CC"}))
    assert mac["MAC"] == "00:11:22:AA:BB:CC"
    registers = model_registers(63001, {"ipaddr": 0xC0A80114, "int64": -5})
    ipv6 = model_definition(63001).group.point("ipv6addr").offset
    registers[ipv6 : ipv6 + 8] = [0x2001, 0x0DB8, 0, 0, 0, 0, 0, 1]
    decoded = decode_model(63001, registers)
    assert (decoded["ipaddr"], decoded["int64"]) == ("192.168.1.20", -5)
    assert decoded["ipv6addr"] == "2001:db8::1"


def test_a_changed_scale_factor_register_changes_the_next_decode() -> None:
    """Scale factors are read from each block, never cached: W_SF 1 then 0 gives 4750 then 475."""
    registers = model_registers(103, INVERTER)
    assert decode_model(103, registers)["W"] == pytest.approx(4750)
    w_sf = 15
    registers[w_sf] = 0
    assert decode_model(103, registers)["W"] == pytest.approx(475)
    registers[w_sf] = 0xFFFE
    assert decode_model(103, registers)["W"] == pytest.approx(4.75)


def test_the_230_vs_475_regression() -> None:
    """W=475 with W_SF=1 is 4.75 kW, not the 2.30 kW the old hard-coded table produced."""
    assert to_canonical(decode_all([(103, INVERTER)]))["power_kw"] == pytest.approx(4.75)


@pytest.mark.parametrize(
    ("model_id", "point", "offset", "sentinel"),
    [
        (103, "W", 14, [0x8000]),
        (103, "A", 2, [0xFFFF]),
        (103, "WH", 24, [0, 0]),
        (103, "St", 38, [0xFFFF]),
        (103, "Evt1", 40, [0xFFFF, 0xFFFF]),
        (701, "Hz", 16, [0xFFFF, 0xFFFF]),
        (701, "TotWhInj", 18, [0xFFFF] * 4),
        (704, "WSet", 26, [0x8000, 0]),
        (113, "W", 22, [0x7FC0, 0]),
        (1, "Mn", 2, [0] * 16),
    ],
)
def test_not_implemented_sentinels_become_missing(
    model_id: int, point: str, offset: int, sentinel: list[int]
) -> None:
    """int16, uint16, acc32, enum16, bitfield32, uint32, uint64, int32, float32 and strings."""
    data = {"W": 1, "W_SF": 0} if model_id == 103 else {}
    registers = model_registers(model_id, data)
    registers[offset : offset + len(sentinel)] = sentinel
    assert decode_model(model_id, registers)[point] is MISSING


def test_an_unimplemented_scale_factor_makes_its_points_missing() -> None:
    """A_SF 0x8000 makes A and the phase currents missing, leaving other points alone."""
    registers = model_registers(103, INVERTER)
    registers[6] = 0x8000
    decoded = decode_model(103, registers)
    assert [decoded[name] for name in ("A", "AphA", "AphB", "AphC", "A_SF")] == [MISSING] * 5
    assert decoded["W"] == pytest.approx(4750)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[:-1], "L is 50 but 51"),
        (lambda r: [r[0], 10, *r[2:12]], "below 50"),
        (lambda r: [102, *r[1:]], "does not start with its id"),
        (lambda r: [*r[:14], 70000, *r[15:]], "outside 0..65535"),
        (lambda r: [*r[:15], 11, *r[16:]], "scale factor 11"),
        (lambda r: [*r[:15], 0xFFF5, *r[16:]], "scale factor -11"),
    ],
)
def test_bad_blocks_raise_protocol_error(change: Any, message: str) -> None:
    """Short blocks, wrong headers, out-of-range registers and scale factors beyond +-10."""
    with pytest.raises(ProtocolError, match=message):
        decode_model(103, change(model_registers(103, INVERTER)))


def test_repeating_groups_need_a_whole_number_of_instances() -> None:
    """Model 160 with a partial module, or 705 with too many curves, raises ProtocolError."""
    registers = model_registers(160, MPPT)
    registers = [160, registers[1] + 1, *registers[2:], 0]
    with pytest.raises(ProtocolError, match="not a multiple of 20"):
        decode_model(160, registers)
    curves = model_registers(705, {"NPt": 2, "NCrv": 1, "Crv": [{"Pt": [{}, {}]}]})
    curves[6] = 3
    with pytest.raises(ProtocolError, match="runs past the block"):
        decode_model(705, curves)
    curves[6] = 0xFFFF
    with pytest.raises(ProtocolError, match="count NCrv is not implemented"):
        decode_model(705, curves)


def test_an_infinite_float_is_a_protocol_error() -> None:
    """A float32 holding infinity is not a value."""
    registers = model_registers(113, {})
    registers[22:24] = [0x7F80, 0]
    with pytest.raises(ProtocolError, match="not a finite number"):
        decode_model(113, registers)


def test_canonical_fields_follow_the_sign_convention_and_units() -> None:
    """kW, kvar, kWh from W, var, Wh; the DER model 701 takes precedence over 103."""
    fields = to_canonical(decode_all(DEVICE))
    assert fields["power_kw"] == pytest.approx(4.75)
    assert fields["reactive_power_kvar"] == pytest.approx(-0.12)
    assert fields["voltage_v"] == pytest.approx(230.0)
    assert fields["current_a"] == pytest.approx(6.883, abs=1e-3)
    assert fields["frequency_hz"] == pytest.approx(50.01)
    assert fields["energy_kwh"] == pytest.approx(1234.567)
    assert fields["dc_power_kw"] == pytest.approx(4.9)
    assert fields["soc_percent"] == pytest.approx(61)
    assert fields["soh_percent"] == pytest.approx(97)
    assert fields["charge_rate_kw"] == pytest.approx(5.0)
    assert fields["state"] == OperatingState.ON


def test_absorbed_power_is_negative() -> None:
    """A DER absorbing 3 kW (701 W=-3000) and a charging battery (802) report negative power."""
    assert to_canonical(decode_all([(701, {"W": -3000, "W_SF": 0})]))["power_kw"] == -3.0
    battery = to_canonical(decode_all([(802, BATTERY)]))
    assert battery["power_kw"] == pytest.approx(-2.5)
    assert battery["state"] == OperatingState.CHARGING


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (1, OperatingState.OFF),
        (2, OperatingState.SLEEPING),
        (4, OperatingState.ON),
        (5, OperatingState.THROTTLED),
        (7, OperatingState.FAULT),
        (8, OperatingState.STANDBY),
        (42, OperatingState.UNKNOWN),
    ],
)
def test_inverter_state_maps_to_operating_state(code: int, state: OperatingState) -> None:
    """SunSpec St codes of model 103 map by symbol name; vendor codes become unknown."""
    assert to_canonical(decode_all([(103, {"St": code})]))["state"] == state


def test_fallback_sources_fill_fields_the_first_source_lacks() -> None:
    """Without 160, 701 or 802: DC power from 103 DCW and SoC from 124 ChaState."""
    storage = {"ChaState": 456, "ChaState_SF": -1, "WChaMax": 30, "WChaMax_SF": 2, "ChaSt": 3}
    fields = to_canonical(decode_all([(103, INVERTER), (124, storage)]))
    assert fields["dc_power_kw"] == pytest.approx(4.9)
    assert fields["soc_percent"] == pytest.approx(45.6)
    assert fields["charge_rate_kw"] == pytest.approx(3.0)
    assert fields["state"] == OperatingState.ON


def test_missing_values_become_none() -> None:
    """An inverter implementing nothing but St gives None for every measurement."""
    fields = to_canonical(decode_all([(103, {"St": 8})]))
    assert fields.pop("state") == OperatingState.STANDBY
    assert set(fields.values()) == {None}


def test_canonical_fields_validate_as_solar_and_battery_telemetry() -> None:
    """The mapped fields build SolarTelemetry and BatteryTelemetry records."""
    fields = to_canonical(decode_all(DEVICE))
    stamp = {"device_id": "inv-1", "timestamp": datetime(2026, 1, 1, tzinfo=UTC)}
    for cls in (SolarTelemetry, BatteryTelemetry):
        record = cls(**stamp, **{k: v for k, v in fields.items() if k in cls.model_fields})
        assert record.power_kw == pytest.approx(4.75)


def test_device_info_comes_from_the_common_model() -> None:
    """Manufacturer, model, serial and version come from model 1, not telemetry."""
    models = decode_all(DEVICE)
    assert device_info(models) == {
        "manufacturer": "ACME",
        "model": "PV-5000",
        "serial_number": "SN123",
        "firmware_version": "1.2.3",
    }
    assert "manufacturer" not in to_canonical(models)
    assert device_info({}) == dict.fromkeys(device_info(models))
