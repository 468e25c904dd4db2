"""How the adapter manager builds IEC 61850 adapters: the profile named by the connection is
a file or a shipped one, and the MMS client's native library loads only when needed."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from derim.adapters.iec61850.adapter import Iec61850Adapter
from derim.adapters.manager import AdapterManager
from derim.errors import InvalidRequestError
from derim.models.common import DeviceType
from derim.models.device import DERDevice, Iec61850Connection

SHIPPED = files("derim.adapters.iec61850").joinpath("profiles", "generic_der_battery.yaml")


async def publish(records: object) -> None:
    raise AssertionError("nothing is polled here")


def device(profile: str, kind: DeviceType = DeviceType.BATTERY) -> DERDevice:
    connection = Iec61850Connection(
        protocol="iec61850", host="127.0.0.1", ied_name="BESS1", profile=profile
    )
    return DERDevice(id="bess-1", device_type=kind, connection=connection)


def test_manager_import_leaves_the_mms_library_unloaded() -> None:
    """Importing the adapter manager (as every server start does) does not load iec61850."""
    probe = "import sys, derim.adapters.manager; print('iec61850' in sys.modules)"
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert answer.stdout.strip() == "False"


def test_profile_is_a_file_when_named_like_yaml(tmp_path: Path) -> None:
    """A profile ending in .yaml is read from that file; any other name is a shipped one."""
    path = tmp_path / "mine.yaml"
    path.write_text(SHIPPED.read_text().replace("name: generic_der_battery", "name: mine"))
    from_file = AdapterManager(publish).prepare(device(str(path)))
    shipped = AdapterManager(publish).prepare(device("generic_der_battery"))
    assert isinstance(from_file, Iec61850Adapter)
    assert isinstance(shipped, Iec61850Adapter)
    assert from_file.profile.name == "mine"
    assert shipped.profile.name == "generic_der_battery"


@pytest.mark.parametrize(
    ("profile", "kind", "expected"),
    [
        ("absent.yaml", DeviceType.BATTERY, "cannot read IEC 61850 profile absent.yaml"),
        ("absent", DeviceType.BATTERY, "no shipped IEC 61850 profile named 'absent'"),
        ("generic_der_battery", DeviceType.SOLAR_PV, "describes a battery, not a solar_pv"),
    ],
)
def test_unusable_profile_is_refused_on_connection_profile(
    profile: str, kind: DeviceType, expected: str
) -> None:
    """A missing file, an unknown shipped name or a profile for another kind of device is an
    InvalidRequestError on connection.profile that says which."""
    with pytest.raises(InvalidRequestError, match=expected) as info:
        AdapterManager(publish).prepare(device(profile, kind))
    assert info.value.field == "connection.profile"
