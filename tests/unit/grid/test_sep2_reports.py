"""IEEE 2030.5 DERStatus from the devices' readings: what the readings say, nothing more."""

from __future__ import annotations

from envoy_schema.server.schema.sep2.der import ConnectStatusType

from derim.grid.sep2.reports import status

NOW = 1_700_000_000
CONNECTED = ConnectStatusType.CONNECTED
AVAILABLE = ConnectStatusType.AVAILABLE
OPERATING = ConnectStatusType.OPERATING
FAULT = ConnectStatusType.FAULT_ERROR


def connect_status(*states: str) -> int | None:
    """genConnectStatus (as a number) for devices in ``states``, or None when left out."""
    readings = {f"d{i}": {"state": state} for i, state in enumerate(states)}
    value = status(readings, NOW).genConnectStatus
    return None if value is None else int(value.value, 16)


def test_a_running_device_is_connected_available_and_operating() -> None:
    """One device producing makes the site connected, available and operating."""
    assert connect_status("on", "off") == CONNECTED | AVAILABLE | OPERATING


def test_devices_off_or_in_standby_are_not_connected() -> None:
    """Off and standby (where a disconnect leaves an inverter) are not connected; standby is
    still available, off is not."""
    assert connect_status("standby") == AVAILABLE
    assert connect_status("off") == 0


def test_a_faulted_device_is_reported_as_fault() -> None:
    """A device in fault sets the fault bit and is neither connected nor available."""
    assert connect_status("fault") == FAULT
    assert connect_status("fault", "sleeping") == CONNECTED | AVAILABLE | FAULT


def test_no_readings_leave_the_connect_status_out() -> None:
    """Without a reading (or with only unknown states) nothing is claimed."""
    assert connect_status() is None
    assert connect_status("unknown") is None
    assert status({"d0": {"power_kw": 1.0}}, NOW).genConnectStatus is None
