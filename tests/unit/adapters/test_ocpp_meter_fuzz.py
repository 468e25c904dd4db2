"""Hypothesis fuzzing of OCPP meter mapping: any input gives MeterReadings or a ProtocolError."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.ocpp.meter import MeterReadings, readings_v16, readings_v201
from derim.errors import ProtocolError

FUZZ = settings(max_examples=200, deadline=None)
MEASURANDS = [
    "Energy.Active.Import.Register", "Energy.Active.Export.Register",
    "Energy.Active.Import.Interval", "Energy.Reactive.Import.Register", "Power.Active.Import",
    "Power.Active.Export", "Power.Reactive.Import", "Power.Reactive.Export", "Power.Offered",
    "Power.Factor", "Current.Import", "Current.Export", "Current.Offered", "Voltage",
    "Frequency", "Temperature", "SoC", "RPM",
]  # fmt: skip
UNITS = [
    "Wh", "kWh", "varh", "kvarh", "W", "kW", "VA", "kVA", "var", "kvar", "A", "V", "K",
    "Celcius", "Celsius", "Fahrenheit", "Percent", "Hertz", "Hz", "",
]  # fmt: skip
PHASES = ["L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1"]
LOCATIONS = ["Cable", "EV", "Inlet", "Outlet", "Body"]
TIMESTAMPS = [
    "2026-11-26T10:00:00Z", "2026-11-26T10:00:00.5Z", "2026-11-26T11:00:00+01:00",
    "2026-11-26T10:15:00", "1969-01-01T00:00:00Z",
]  # fmt: skip

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON-like value (floats include NaN and infinities, integers are unbounded)."""


def maybe(values: st.SearchStrategy[Any], good: int = 2) -> st.SearchStrategy[Any]:
    """``values`` ``good`` times out of ``good`` + 2, else absent (None) or junk."""
    pick = st.sampled_from(["good"] * good + ["none", "junk"])
    return pick.flatmap(lambda p: values if p == "good" else st.none() if p == "none" else JSON)


def rarely_bad(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``values`` nine times in ten: structure is mostly right, so the mapping is reached."""
    return maybe(values, good=18)


NUMBER = st.floats() | st.integers() | st.floats(-1e4, 1e4).map(repr)
SAMPLED = st.fixed_dictionaries(
    {"value": maybe(NUMBER)},
    optional={
        "measurand": maybe(st.sampled_from(MEASURANDS)),
        "unit": maybe(st.sampled_from(UNITS)),
        "phase": maybe(st.sampled_from(PHASES)),
        "location": maybe(st.sampled_from(LOCATIONS)),
        "format": maybe(st.sampled_from(["Raw", "SignedData"])),
        "unit_of_measure": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "unit": maybe(st.sampled_from(UNITS)),
                    "multiplier": maybe(st.integers(-400, 400)),
                },
            )
        ),
    },
)
ENTRY = st.fixed_dictionaries(
    {
        "timestamp": rarely_bad(st.sampled_from(TIMESTAMPS)),
        "sampled_value": rarely_bad(st.lists(rarely_bad(SAMPLED), min_size=1, max_size=6)),
    }
)
METER_VALUE = st.one_of(JSON, st.lists(rarely_bad(ENTRY), max_size=4), st.lists(ENTRY, max_size=4))
TRANSACTION = st.none() | st.text(max_size=70)


def check(readings: MeterReadings) -> None:
    """Every mapped value is a finite number or a key."""
    for record in readings.records:
        for name, value in record.model_dump(exclude_none=True).items():
            assert not isinstance(value, float) or math.isfinite(value), name


@FUZZ
@given(meter_value=METER_VALUE, connector_id=st.integers(0, 10), transaction_id=TRANSACTION)
def test_v16_returns_readings_or_raises_protocol_error(
    meter_value: Any, connector_id: int, transaction_id: str | None
) -> None:
    """Any JSON-like 1.6 input gives finite readings or a ProtocolError, nothing else."""
    with contextlib.suppress(ProtocolError):
        check(readings_v16("cp-1", connector_id, meter_value, transaction_id))


@FUZZ
@given(meter_value=METER_VALUE, evse_id=st.integers(0, 10), transaction_id=TRANSACTION)
def test_v201_returns_readings_or_raises_protocol_error(
    meter_value: Any, evse_id: int, transaction_id: str | None
) -> None:
    """Any JSON-like 2.0.1 input gives finite readings or a ProtocolError, nothing else."""
    with contextlib.suppress(ProtocolError):
        check(readings_v201("cp-1", evse_id, meter_value, transaction_id))
