"""IEC 61850 over MMS: polls an IED's logical-node data (MMXU, ZBAT, ...) into canonical
telemetry and writes its setpoints, through a YAML profile of object references."""

from derim.adapters.iec61850.profile import (
    ControlPoint,
    Point,
    Profile,
    load_profile,
    load_profile_text,
    shipped_profile,
)

__all__ = [
    "ControlPoint",
    "Point",
    "Profile",
    "load_profile",
    "load_profile_text",
    "shipped_profile",
]
