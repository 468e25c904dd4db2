"""Register image of a plain-Modbus meter laid out as the shipped ``generic_meter`` profile.

The values come in DERIM's units and conventions (power export positive); the image holds them as
the meter does: power import positive in W and var, voltage and current as u16 mantissas with a
power-of-ten scale factor, energy as u64 Wh with the low word first, the serial number as 16 ASCII
characters. Input registers 0-27 and holding registers 100-107 share one address space from 0, as
a ``SimUnit`` keeps them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

IMAGE_SIZE = 108
"""Registers of the image (addresses 0-107); a ``SimUnit`` serving it needs at least this many."""
SERIAL_LENGTH = 16
"""Characters of the serial number (8 registers, NUL padded)."""
_EXPONENTS = range(-3, 4)
"""Scale-factor exponents the meter chooses from, finest first."""


@dataclass(frozen=True, slots=True)
class MeterValues:
    """What the meter measures, in DERIM's units; power is positive while the site exports."""

    power_kw: float = 0.0
    reactive_power_kvar: float = 0.0
    voltage_v: float = 230.0
    """Line-to-neutral average, V."""
    current_a: float = 0.0
    """Average of the phases, A."""
    frequency_hz: float = 50.0
    power_factor: float = 1.0
    energy_import_kwh: float = 0.0
    energy_export_kwh: float = 0.0
    serial_number: str = "DERIM-SIM-METER"


def meter_image(values: MeterValues) -> list[int]:
    """Registers 0-107 of a ``generic_meter`` holding ``values`` (reserved registers 0).

    Voltage and current get the finest scale factor (10**-3 to 10**3) that fits their u16
    register. Raises ``ValueError`` for a value the meter's registers cannot hold (a negative
    voltage, current or energy, a number out of range or not finite, a serial number longer than
    ``SERIAL_LENGTH`` characters or not ASCII).
    """
    voltage, voltage_sf = _mantissa("voltage_v", values.voltage_v)
    current, current_sf = _mantissa("current_a", values.current_a)
    image = [0] * IMAGE_SIZE
    image[0:6] = [
        voltage,
        voltage_sf & 0xFFFF,
        current,
        current_sf & 0xFFFF,
        *_words("frequency_hz", "H", values.frequency_hz, 0.01),
        *_words("power_factor", "h", values.power_factor, 0.001),
    ]
    image[6:8] = _words("power_kw", "i", values.power_kw, -0.001)
    image[8:10] = _words("reactive_power_kvar", "i", values.reactive_power_kvar, -0.001)
    image[20:24] = _words("energy_import_kwh", "Q", values.energy_import_kwh, 0.001)[::-1]
    image[24:28] = _words("energy_export_kwh", "Q", values.energy_export_kwh, 0.001)[::-1]
    serial = values.serial_number.encode("ascii")
    if len(serial) > SERIAL_LENGTH:
        raise ValueError(f"serial number {values.serial_number!r} is over {SERIAL_LENGTH} chars")
    image[100:108] = _registers(serial.ljust(SERIAL_LENGTH, b"\x00"))
    return image


def _mantissa(name: str, value: float) -> tuple[int, int]:
    """``value`` as (u16 mantissa, exponent) with the finest exponent whose mantissa fits."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} {value} is not a finite number >= 0")
    for exponent in _EXPONENTS:
        mantissa = round(value / 10.0**exponent)
        if mantissa < 0xFFFF:  # 0xFFFF means 'not measured'
            return mantissa, exponent
    raise ValueError(f"{name} {value} is too large for the meter")


def _words(name: str, fmt: str, value: float, step: float) -> list[int]:
    """``value`` in steps of ``step``, packed as struct format ``fmt``, as big-endian registers."""
    try:
        packed = struct.pack(f">{fmt}", round(value / step))
    except (struct.error, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} {value} does not fit the meter's register: {exc}") from exc
    return _registers(packed)


def _registers(data: bytes) -> list[int]:
    """``data`` (an even number of bytes) as 16-bit registers, high byte first."""
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
