"""Canonical telemetry validation: units, ranges, identifiers and UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from derim.models import (
    TELEMETRY_CLASSES,
    BatteryTelemetry,
    DERTelemetry,
    MeterTelemetry,
    SolarTelemetry,
)
from derim.models.standards import standard_names

T0 = "2024-06-01T12:00:00Z"


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_power_is_rejected_naming_the_field(value: float) -> None:
    """NaN and infinities never enter the model; the error names power_kw."""
    with pytest.raises(ValidationError) as caught:
        DERTelemetry(device_id="d1", timestamp=T0, power_kw=value)
    assert error_fields(caught.value) == {"power_kw"}


@pytest.mark.parametrize("soc", [-0.1, 100.01, 250])
def test_soc_outside_0_100_is_rejected(soc: float) -> None:
    """State of charge is a percentage."""
    with pytest.raises(ValidationError) as caught:
        BatteryTelemetry(device_id="b1", timestamp=T0, soc_percent=soc)
    assert error_fields(caught.value) == {"soc_percent"}


@pytest.mark.parametrize("field", ["voltage_v", "frequency_hz", "current_a"])
def test_negative_magnitudes_are_rejected(field: str) -> None:
    """Voltage, frequency and current magnitudes cannot be negative."""
    with pytest.raises(ValidationError) as caught:
        DERTelemetry.model_validate({"device_id": "d1", "timestamp": T0, field: -1.0})
    assert error_fields(caught.value) == {field}


def test_negative_power_is_allowed_by_the_sign_convention() -> None:
    """Charging or consuming devices report negative power."""
    assert DERTelemetry(device_id="d1", timestamp=T0, power_kw=-7.4).power_kw == -7.4


@pytest.mark.parametrize("device_id", ["", "x" * 129, "has space", "slash/id", "-lead"])
def test_bad_ids_are_rejected(device_id: str) -> None:
    """Ids are 1-128 safe characters."""
    with pytest.raises(ValidationError) as caught:
        DERTelemetry(device_id=device_id, timestamp=T0)
    assert error_fields(caught.value) == {"device_id"}


def test_offsets_become_the_same_utc_instant() -> None:
    """A timestamp with an offset is stored as the identical instant in UTC."""
    record = DERTelemetry(device_id="d1", timestamp="2024-06-01T14:30:00+02:30")
    assert record.timestamp == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert record.timestamp.utcoffset() == timedelta(0)


def test_naive_timestamps_are_read_as_utc() -> None:
    """A naive timestamp is taken to be UTC (documented in docs/data-model.md)."""
    record = DERTelemetry(device_id="d1", timestamp=datetime(2024, 6, 1, 12, 0))
    assert record.timestamp == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_aware_datetime_objects_are_converted() -> None:
    """datetime objects with a tzinfo are converted like strings are."""
    eastern = timezone(timedelta(hours=-5))
    record = DERTelemetry(device_id="d1", timestamp=datetime(2024, 6, 1, 7, 0, tzinfo=eastern))
    assert record.timestamp == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_fields_of_another_der_type_are_refused() -> None:
    """A meter reading cannot carry battery fields: nothing is silently dropped."""
    with pytest.raises(ValidationError) as caught:
        MeterTelemetry.model_validate({"device_id": "m1", "timestamp": T0, "soc_percent": 50})
    assert error_fields(caught.value) == {"soc_percent"}


def test_quality_defaults_to_good_and_state_is_an_enum() -> None:
    """Quality and state take documented values only."""
    record = SolarTelemetry(device_id="pv", timestamp=T0, state="on")
    assert record.quality == "good"
    with pytest.raises(ValidationError):
        SolarTelemetry(device_id="pv", timestamp=T0, state="sunbathing")


def test_every_measurement_carries_its_standard_names() -> None:
    """Each field (but the keys) names its unit, IEEE 2030.5 and CIM counterparts."""
    for cls in TELEMETRY_CLASSES:
        names = standard_names(cls)
        assert set(names) == set(cls.model_fields) - {"device_id", "timestamp"}
        assert all(n.ieee2030_5 and n.cim for n in names.values())


@pytest.mark.parametrize("moment", ["1969-12-31T23:00:00", "1970-01-01T00:30:00+01:00"])
def test_readings_before_the_unix_epoch_are_refused(moment: str) -> None:
    """Timestamps must be 1970 or later (storage keys are epoch milliseconds)."""
    with pytest.raises(ValidationError) as caught:
        DERTelemetry(device_id="d1", timestamp=moment)
    assert error_fields(caught.value) == {"timestamp"}
