"""Synthetic but realistic fleet readings: PV inverters and meters, six fields each, 3 decimals.

Readings come tick by tick (every device at second ``t``, then every device at ``t + 1``), the
order a polling adapter publishes them in. Values follow a smooth daily shape plus noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from derim.models.telemetry import DERTelemetry, MeterTelemetry, SolarTelemetry

BASE_TIME = datetime(2025, 1, 6, tzinfo=UTC)
"""Readings start here; runs that share a database use disjoint windows after it."""


def device_id(index: int) -> str:
    """Even indexes are PV inverters, odd ones meters."""
    return f"pv-{index:05d}" if index % 2 == 0 else f"meter-{index:05d}"


def device_type(index: int) -> str:
    """The registry device type of device ``index``."""
    return "solar_pv" if index % 2 == 0 else "meter"


def device_bodies(devices: int) -> list[dict[str, Any]]:
    """``POST /api/v1/devices`` bodies registering the fleet."""
    return [
        {"id": device_id(i), "device_type": device_type(i), "rated_power_kw": 10.0}
        for i in range(devices)
    ]


def readings(
    devices: int, ticks: int, first_tick: int = 0, seed: int = 1
) -> Iterator[dict[str, Any]]:
    """Reading dicts (``timestamp`` as a datetime) for ``ticks`` seconds of the fleet."""
    rng = random.Random(seed + first_tick)
    uniform = rng.uniform
    for tick in range(first_tick, first_tick + ticks):
        at = BASE_TIME + timedelta(seconds=tick)
        shape = 0.55 + 0.45 * math.sin(2 * math.pi * (tick % 86_400) / 86_400)
        for index in range(devices):
            power = 8.0 * shape * uniform(0.9, 1.0)
            voltage = uniform(226.0, 234.0)
            reading: dict[str, Any] = {
                "device_id": device_id(index),
                "timestamp": at,
                "power_kw": round(power, 3),
                "voltage_v": round(voltage, 3),
                "current_a": round(power * 1000 / voltage / 3, 3),
                "frequency_hz": round(uniform(49.95, 50.05), 3),
            }
            if index % 2 == 0:
                reading["energy_kwh"] = round(1000 + index + tick * 0.002, 3)
                reading["irradiance_w_m2"] = round(1000 * shape * uniform(0.9, 1.0), 3)
            else:
                reading["power_kw"] = round(power - 6.0, 3)
                reading["energy_import_kwh"] = round(500 + index + tick * 0.001, 3)
                reading["power_factor"] = round(uniform(0.9, 1.0), 3)
            yield reading


def build_records(
    devices: int, ticks: int, first_tick: int = 0, seed: int = 1
) -> list[DERTelemetry]:
    """Validated canonical records (constructed through the models, as adapters do)."""
    records: list[DERTelemetry] = []
    for reading in readings(devices, ticks, first_tick, seed):
        cls = SolarTelemetry if reading["device_id"].startswith("pv-") else MeterTelemetry
        records.append(cls(**reading))
    return records


def json_reading(reading: dict[str, Any]) -> dict[str, Any]:
    """The reading as a client would send it (ISO 8601 UTC timestamp)."""
    at: datetime = reading["timestamp"]
    return reading | {"timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
