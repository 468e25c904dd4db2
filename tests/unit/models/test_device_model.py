"""Device registry model: connections, locations, stable CIM mRIDs."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from derim.models import DERDevice, DevicePatch, apply_patch
from derim.models.device import ModbusConnection


def test_mrid_is_derived_stably_from_the_id() -> None:
    """Without an explicit mRID, the same id always yields the same UUID v5."""
    first = DERDevice(id="pv-1")
    assert first.mrid == DERDevice(id="pv-1").mrid
    assert first.mrid != DERDevice(id="pv-2").mrid
    assert first.mrid is not None
    assert first.mrid.version == 5


def test_explicit_mrid_is_kept() -> None:
    """An mRID given by the operator is not replaced."""
    mrid = uuid.uuid4()
    assert DERDevice(id="pv-1", mrid=mrid).mrid == mrid


def test_connection_is_chosen_by_protocol() -> None:
    """The connection union is discriminated on ``protocol``."""
    device = DERDevice.model_validate(
        {"id": "inv", "connection": {"protocol": "sunspec", "host": "10.0.0.5", "unit_id": 3}}
    )
    assert isinstance(device.connection, ModbusConnection)
    assert device.protocol == "sunspec"
    assert DERDevice(id="x").protocol == "http"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"id": "x", "location": {"latitude": 91, "longitude": 0}}, "location.latitude"),
        ({"id": "x", "rated_power_kw": -1}, "rated_power_kw"),
        (
            {"id": "x", "connection": {"protocol": "modbus", "host": "h", "port": 70000}},
            "connection.modbus.port",
        ),
        ({"id": "x", "groups": ["bad group"]}, "groups.0"),
        ({"id": "x", "device_type": "nuclear"}, "device_type"),
    ],
)
def test_invalid_devices_name_the_field(payload: dict[str, object], field: str) -> None:
    """Validation errors carry the path of the bad field."""
    with pytest.raises(ValidationError) as caught:
        DERDevice.model_validate(payload)
    paths = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert field in paths


def test_patch_changes_only_given_fields() -> None:
    """PATCH semantics: absent fields stay, given ones are re-validated."""
    device = DERDevice(id="b1", name="old", rated_power_kw=5, groups=["a"])
    patched = apply_patch(device, DevicePatch(name="new"))
    assert (patched.name, patched.rated_power_kw, patched.groups) == ("new", 5, ["a"])
    assert patched.mrid == device.mrid
