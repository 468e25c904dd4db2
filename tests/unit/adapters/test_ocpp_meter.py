"""OCPP 1.6 and 2.0.1 MeterValues to canonical EV-charger records, problems and ProtocolError."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from derim.adapters.ocpp.meter import MeterReadings, readings_v16, readings_v201
from derim.errors import ProtocolError

T0 = "2026-11-26T10:00:00Z"
T1 = "2026-11-26T10:01:00Z"
KEYS = {"device_id", "timestamp", "quality", "connector_id", "transaction_id"}
VERSIONS = ["1.6", "2.0.1"]


@dataclass(frozen=True)
class S:
    """A sampled value, written once for both protocol versions."""

    value: float
    measurand: str | None = None
    unit: str | None = None
    phase: str | None = None
    location: str | None = None

    def wire(self, version: str) -> dict[str, Any]:
        """The sampled value as the ``ocpp`` library hands it over for ``version``."""
        common = {"measurand": self.measurand, "phase": self.phase, "location": self.location}
        sampled: dict[str, Any] = {k: v for k, v in common.items() if v is not None}
        if version == "1.6":
            sampled["value"] = repr(self.value)
            if self.unit is not None:
                sampled["unit"] = self.unit
        else:
            sampled["value"] = self.value
            if self.unit is not None:
                sampled["unit_of_measure"] = {"unit": self.unit}
        return sampled


def read(version: str, meter_value: Any, transaction_id: str | None = None) -> MeterReadings:
    """``meter_value`` mapped by the reader of ``version`` for charger cp-1, connector/EVSE 1."""
    reader = readings_v16 if version == "1.6" else readings_v201
    return reader("cp-1", 1, meter_value, transaction_id)


def entry(version: str, *samples: S | dict[str, Any], timestamp: str = T0) -> dict[str, Any]:
    """One meter_value entry holding ``samples`` (S objects or raw sampled-value dicts)."""
    sampled = [s.wire(version) if isinstance(s, S) else s for s in samples]
    return {"timestamp": timestamp, "sampled_value": sampled}


def values(readings: MeterReadings) -> dict[str, Any]:
    """The measured fields of the single record in ``readings``."""
    (record,) = readings.records
    return record.model_dump(exclude_none=True, exclude=KEYS)


MAPPINGS: list[tuple[str, list[S], dict[str, float]]] = [
    ("no measurand: import register in Wh", [S(1234.5)], {"energy_import_kwh": 1.2345}),
    ("register in kWh", [S(12.5, unit="kWh")], {"energy_import_kwh": 12.5}),
    ("import power is negative", [S(7000, "Power.Active.Import", "W")], {"power_kw": -7.0}),
    ("power defaults to W", [S(7000, "Power.Active.Import")], {"power_kw": -7.0}),
    ("export power is positive", [S(3, "Power.Active.Export", "kW")], {"power_kw": 3.0}),
    (
        "export minus import",
        [S(7, "Power.Active.Import", "kW"), S(2000, "Power.Active.Export", "W")],
        {"power_kw": -5.0},
    ),
    (
        "phase powers are summed",
        [S(2300, "Power.Active.Import", "W", p) for p in ("L1", "L2", "L3")],
        {"power_kw": -6.9},
    ),
    (
        "a total power wins over the phase sum",
        [S(1000, "Power.Active.Import", "W", "L1"), S(7000, "Power.Active.Import", "W")],
        {"power_kw": -7.0},
    ),
    (
        "reactive import is negative",
        [S(500, "Power.Reactive.Import")],
        {"reactive_power_kvar": -0.5},
    ),
    (
        "reactive export is positive",
        [S(1.5, "Power.Reactive.Export", "kvar")],
        {"reactive_power_kvar": 1.5},
    ),
    (
        "phase currents: mean and per phase",
        [S(a, "Current.Import", "A", p) for a, p in ((10, "L1"), (12, "L2"), (14, "L3"))],
        {"current_a": 12.0, "current_l1_a": 10.0, "current_l2_a": 12.0, "current_l3_a": 14.0},
    ),
    (
        "a total current wins over the phase mean",
        [S(10, "Current.Import", "A", "L1"), S(16, "Current.Import")],
        {"current_a": 16.0, "current_l1_a": 10.0},
    ),
    (
        "line-to-neutral voltages: mean and per phase",
        [S(v, "Voltage", "V", p) for v, p in ((230, "L1-N"), (232, "L2-N"), (228, "L3-N"))],
        {"voltage_v": 230.0, "voltage_l1_v": 230.0, "voltage_l2_v": 232.0, "voltage_l3_v": 228.0},
    ),
    (
        "L1/L2/L3 voltages read as line-to-neutral",
        [S(230, "Voltage", phase="L1"), S(234, "Voltage", phase="L2")],
        {"voltage_v": 232.0, "voltage_l1_v": 230.0, "voltage_l2_v": 234.0},
    ),
    (
        "line-to-line voltages alone are divided by sqrt 3",
        [S(400, "Voltage", "V", "L1-L2"), S(410, "Voltage", "V", "L3-L1")],
        {
            "voltage_v": 405 / math.sqrt(3),
            "voltage_l1_v": 400 / math.sqrt(3),
            "voltage_l3_v": 410 / math.sqrt(3),
        },
    ),
    (
        "line-to-line voltages are ignored beside line-to-neutral ones",
        [S(400, "Voltage", "V", "L1-L2"), S(230, "Voltage", "V", "L1-N")],
        {"voltage_v": 230.0, "voltage_l1_v": 230.0},
    ),
    ("offered current", [S(16, "Current.Offered", "A")], {"offered_current_a": 16.0}),
    ("offered power", [S(11000, "Power.Offered", "W")], {"offered_power_kw": 11.0}),
    (
        "interval energy",
        [S(500, "Energy.Active.Import.Interval", "Wh")],
        {"interval_energy_kwh": 0.5},
    ),
    (
        "export register",
        [S(2.5, "Energy.Active.Export.Register", "kWh")],
        {"energy_export_kwh": 2.5},
    ),
    ("frequency in Hz", [S(50.02, "Frequency", "Hz")], {"frequency_hz": 50.02}),
    ("frequency in Hertz (1.6 schema)", [S(49.9, "Frequency", "Hertz")], {"frequency_hz": 49.9}),
    ("SoC at the EV", [S(80, "SoC", "Percent", location="EV")], {"soc_percent": 80.0}),
    ("temperature in Celsius", [S(35, "Temperature", "Celsius")], {"temperature_c": 35.0}),
    (
        "temperature in Celcius (1.6 schema)",
        [S(35, "Temperature", "Celcius")],
        {"temperature_c": 35.0},
    ),
    ("temperature in Fahrenheit", [S(95, "Temperature", "Fahrenheit")], {"temperature_c": 35.0}),
    ("temperature in kelvin", [S(308.15, "Temperature", "K")], {"temperature_c": 35.0}),
    ("power factor", [S(-0.95, "Power.Factor")], {"power_factor": -0.95}),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("case", "samples", "expected"), MAPPINGS, ids=[m[0] for m in MAPPINGS])
def test_measurands_map_to_canonical_fields(
    version: str, case: str, samples: list[S], expected: dict[str, float]
) -> None:
    """Each measurand lands in its field, in its canonical unit, with the grid sign convention."""
    readings = read(version, [entry(version, *samples)])
    assert readings.problems == []
    got = values(readings)
    if "energy_import_kwh" in expected:
        assert got.pop("energy_kwh") == pytest.approx(expected["energy_import_kwh"])
    assert got == pytest.approx(expected)


MULTIPLIERS: list[tuple[dict[str, Any], dict[str, float]]] = [
    ({"value": 1.5, "unit_of_measure": {"unit": "Wh", "multiplier": 3}}, {"energy_kwh": 1.5}),
    ({"value": 1.5, "unit_of_measure": {"unit": "kWh", "multiplier": 0}}, {"energy_kwh": 1.5}),
    ({"value": 15, "unit_of_measure": {"multiplier": 2}}, {"energy_kwh": 1.5}),
    ({"value": 1.5, "unit_of_measure": {"unit": "Wh"}}, {"energy_kwh": 0.0015}),
    (
        {"value": 70000, "measurand": "Power.Active.Import", "unit_of_measure": {"multiplier": -1}},
        {"power_kw": -7.0},
    ),
    (
        {"value": 2300, "measurand": "Voltage", "unit_of_measure": {"unit": "V", "multiplier": -1}},
        {"voltage_v": 230.0},
    ),
    (
        {"value": 35, "measurand": "Temperature", "unit_of_measure": {"unit": "Celsius"}},
        {"temperature_c": 35.0},
    ),
]


@pytest.mark.parametrize(("sampled", "expected"), MULTIPLIERS)
def test_v201_multiplier_is_a_power_of_ten(
    sampled: dict[str, Any], expected: dict[str, float]
) -> None:
    """2.0.1 values are scaled by 10 ** multiplier before the unit is converted."""
    got = values(readings_v201("cp-1", 1, [entry("2.0.1", sampled)]))
    got.pop("energy_import_kwh", None)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("version", VERSIONS)
def test_record_carries_keys_and_utc_timestamp(version: str) -> None:
    """Records hold the device, connector/EVSE, transaction and the instant converted to UTC."""
    stamp = "2026-11-26T11:00:00+01:00"
    readings = read(version, [entry(version, S(1000), timestamp=stamp)], transaction_id="tx-9")
    (record,) = readings.records
    assert record.device_id == "cp-1"
    assert record.connector_id == 1
    assert record.transaction_id == "tx-9"
    assert record.timestamp == datetime(2026, 11, 26, 10, tzinfo=UTC)


LOCATIONS: list[tuple[str, list[S], dict[str, float]]] = [
    (
        "outlet wins over inlet",
        [S(240, "Voltage", location="Inlet"), S(230, "Voltage", location="Outlet")],
        {"voltage_v": 230.0},
    ),
    (
        "no location means outlet",
        [S(240, "Voltage", location="Inlet"), S(230, "Voltage")],
        {"voltage_v": 230.0},
    ),
    ("inlet when no outlet value", [S(240, "Voltage", location="Inlet")], {"voltage_v": 240.0}),
    (
        "inlet fills only the measurands the outlet lacks",
        [S(230, "Voltage"), S(7000, "Power.Active.Import", location="Inlet")],
        {"voltage_v": 230.0, "power_kw": -7.0},
    ),
    (
        "EV temperature wins over cable",
        [S(40, "Temperature", location="Cable"), S(30, "Temperature", location="EV")],
        {"temperature_c": 30.0},
    ),
    (
        "outlet temperature wins over EV",
        [S(30, "Temperature", location="EV"), S(45, "Temperature", location="Outlet")],
        {"temperature_c": 45.0},
    ),
    (
        "body temperature when nothing better",
        [S(35, "Temperature", location="Body")],
        {"temperature_c": 35.0},
    ),
    (
        "SoC at the EV wins over the outlet",
        [S(50, "SoC", location="Outlet"), S(80, "SoC", location="EV")],
        {"soc_percent": 80.0},
    ),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("case", "samples", "expected"), LOCATIONS, ids=[c[0] for c in LOCATIONS])
def test_location_preference(
    version: str, case: str, samples: list[S], expected: dict[str, float]
) -> None:
    """Outlet before inlet for electrical values; outlet/EV before cable/body for temperature."""
    readings = read(version, [entry(version, *samples)])
    assert readings.problems == []
    assert values(readings) == pytest.approx(expected)


GOOD = S(2000)
"""A register value that must survive next to a bad one (2 kWh)."""
BAD_SAMPLES: list[tuple[str, dict[str, Any] | S, str]] = [
    ("unmapped measurand", S(1500, "RPM"), "measurand 'RPM' not mapped"),
    ("reactive energy", S(1, "Energy.Reactive.Import.Register", "varh"), "not mapped"),
    ("wrong unit", S(230, "Voltage", "kWh"), "unit 'kWh' not valid for Voltage"),
    ("unknown unit", S(230, "Voltage", "furlong"), "unit 'furlong' not valid"),
    (
        "electrical value at the EV",
        S(230, "Voltage", location="EV"),
        "location 'EV' not used for Voltage",
    ),
    ("unknown location", S(230, "Voltage", location="Roof"), "location 'Roof' not used"),
    (
        "neutral current",
        S(3, "Current.Import", phase="N"),
        "phase 'N' not mapped for Current.Import",
    ),
    ("line-to-line power", S(3, "Power.Active.Import", phase="L1-L2"), "phase 'L1-L2' not mapped"),
    ("negative voltage", S(-5, "Voltage", phase="L1-N"), "voltage_v=-5.0 refused"),
    ("SoC above 100", S(120, "SoC", location="EV"), "soc_percent=120.0 refused"),
    ("power factor above 1", S(1.5, "Power.Factor"), "power_factor=1.5 refused"),
    ("negative register", S(-1), "energy_import_kwh=-0.001 refused"),
    ("no value", {"measurand": "Voltage"}, "value None is not a number"),
    ("non-string measurand", {"value": 1, "measurand": 5}, "measurand 5 is not a string"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("case", "bad", "problem"), BAD_SAMPLES, ids=[b[0] for b in BAD_SAMPLES])
def test_a_bad_sampled_value_is_a_problem_and_the_rest_stays(
    version: str, case: str, bad: dict[str, Any] | S, problem: str
) -> None:
    """A bad sampled value is left out with a problem line naming it; the others are kept."""
    readings = read(version, [entry(version, GOOD, bad)])
    assert values(readings) == pytest.approx({"energy_import_kwh": 2.0, "energy_kwh": 2.0})
    (line,) = readings.problems
    assert line.startswith("meter_value[0].sampled_value[1] (")
    assert problem in line


V16_BAD = [
    ({"value": "abc"}, "value 'abc' is not a number"),
    ({"value": "NaN"}, "value 'NaN' is not a number"),
    ({"value": "inf", "measurand": "Voltage"}, "value 'inf' is not a number"),
    ({"value": "1_000"}, "is not a number"),
    ({"value": "1e999"}, "is not finite"),
    ({"value": "0A1B", "format": "SignedData"}, "format 'SignedData' is not a plain number"),
]
V201_BAD = [
    ({"value": math.nan}, "value nan x 10^0 is not finite"),
    ({"value": math.inf, "measurand": "Voltage"}, "is not finite"),
    ({"value": 1e300, "unit_of_measure": {"multiplier": 10}}, "is not finite"),
    ({"value": 1, "unit_of_measure": {"multiplier": 10**30}}, "is not finite"),
    ({"value": 1, "unit_of_measure": {"multiplier": 1.5}}, "multiplier 1.5 is not an integer"),
    ({"value": 1, "unit_of_measure": "Wh"}, "unit_of_measure 'Wh' is not an object"),
    ({"value": 1, "unit_of_measure": {"unit": 3}}, "unit 3 is not a string"),
]


@pytest.mark.parametrize(
    ("version", "bad", "problem"),
    [("1.6", b, p) for b, p in V16_BAD] + [("2.0.1", b, p) for b, p in V201_BAD],
)
def test_version_specific_bad_values(version: str, bad: dict[str, Any], problem: str) -> None:
    """Non-numbers, NaN, infinity, overflow and SignedData are problems; the rest stays."""
    readings = read(version, [entry(version, GOOD, bad)])
    assert values(readings)["energy_import_kwh"] == 2.0
    (line,) = readings.problems
    assert problem in line


@pytest.mark.parametrize(("version", "value"), [("1.6", 12), ("2.0.1", "12")])
def test_numbers_are_read_in_either_form_and_a_later_duplicate_wins(
    version: str, value: Any
) -> None:
    """A JSON number in 1.6 or decimal text in 2.0.1 is accepted; the last value of a phase wins."""
    readings = read(version, [entry(version, GOOD, {"value": value})])
    assert readings.problems == []
    assert values(readings)["energy_kwh"] == 0.012


@pytest.mark.parametrize("version", VERSIONS)
def test_a_reading_with_only_bad_values_gives_no_record(version: str) -> None:
    """A timestamp whose every value is left out yields problems but no empty record."""
    readings = read(version, [entry(version, S(1, "RPM"), S(-3, "Voltage"))])
    assert readings.records == []
    assert len(readings.problems) == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_an_overflowing_sum_is_a_problem(version: str) -> None:
    """Finite phase values whose sum would overflow (each beyond any real power) leave the
    field out with a problem, not a crash."""
    huge = [S(1e308, "Power.Active.Import", "kW", p) for p in ("L1", "L2")]
    readings = read(version, [entry(version, GOOD, *huge)])
    assert values(readings) == pytest.approx({"energy_import_kwh": 2.0, "energy_kwh": 2.0})
    assert len(readings.problems) == 2
    assert all("power_kw=1e+308 refused" in line for line in readings.problems)


STRUCTURAL: list[tuple[str, Any, str]] = [
    ("meter_value not a list", {"timestamp": T0}, r"meter_value is \{"),
    ("meter_value None", None, "meter_value is None, not a list"),
    ("entry not an object", ["x"], r"meter_value\[0\] is 'x', not an object"),
    (
        "timestamp missing",
        [{"sampled_value": [{"value": 1}]}],
        r"meter_value\[0\]\.timestamp is None",
    ),
    (
        "timestamp unparseable",
        [{"timestamp": "yesterday", "sampled_value": [{"value": 1}]}],
        r"timestamp 'yesterday' is not an ISO 8601",
    ),
    ("sampled_value missing", [{"timestamp": T0}], r"meter_value\[0\]\.sampled_value is None"),
    ("sampled_value empty", [{"timestamp": T0, "sampled_value": []}], r"sampled_value is \[\]"),
    (
        "sampled value not an object",
        [{"timestamp": T0, "sampled_value": [7]}],
        r"sampled_value\[0\] is 7, not an object",
    ),
    (
        "timestamp before 1970",
        [{"timestamp": "1969-12-31T00:00:00Z", "sampled_value": [{"value": 1}]}],
        r"reading at 1969-12-31T00:00:00\+00:00 refused: timestamp",
    ),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("case", "meter_value", "match"), STRUCTURAL, ids=[s[0] for s in STRUCTURAL]
)
def test_structural_errors_raise_protocol_error(
    version: str, case: str, meter_value: Any, match: str
) -> None:
    """A broken list, entry, timestamp or sampled_value raises ProtocolError naming the culprit."""
    with pytest.raises(ProtocolError, match=match):
        read(version, meter_value)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_transaction_id_the_model_refuses_raises(version: str) -> None:
    """A transaction id longer than the model allows is a ProtocolError, not a silent drop."""
    with pytest.raises(ProtocolError, match="transaction_id"):
        read(version, [entry(version, S(1))], transaction_id="x" * 65)


@pytest.mark.parametrize("version", VERSIONS)
def test_each_timestamp_gives_a_record_in_input_order(version: str) -> None:
    """Distinct timestamps give one record each, in input order; equal instants merge."""
    same_as_t1 = "2026-11-26T11:01:00+01:00"
    meter_value = [
        entry(version, S(2000), timestamp=T1),
        entry(version, S(1000), timestamp=T0),
        entry(version, S(230, "Voltage"), S(3000), timestamp=same_as_t1),
    ]
    readings = read(version, meter_value)
    assert [r.timestamp.minute for r in readings.records] == [1, 0]
    first, second = readings.records
    assert (first.voltage_v, first.energy_kwh) == (230.0, 3.0)
    assert second.energy_kwh == 1.0


@pytest.mark.parametrize("version", VERSIONS)
def test_an_empty_list_gives_nothing(version: str) -> None:
    """No meter values give no records and no problems."""
    assert read(version, []) == MeterReadings([], [])


def test_all_contexts_are_accepted() -> None:
    """Every 1.6/2.0.1 reading context is taken as is; context does not change the mapping."""
    contexts = [
        "Sample.Periodic",
        "Sample.Clock",
        "Transaction.Begin",
        "Transaction.End",
        "Trigger",
        "Interruption.Begin",
        "Interruption.End",
        "Other",
    ]
    for context in contexts:
        readings = readings_v16("cp-1", 1, [entry("1.6", {"value": "10", "context": context})])
        assert values(readings)["energy_kwh"] == 0.01
