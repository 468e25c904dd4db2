"""Power forecasts in InfluxDB: line protocol and InfluxQL of measurement ``forecast``.

Each step is a point at its target time (millisecond precision) with tags ``device_id`` and
``model`` and fields ``p10``, ``p50`` and ``p90`` (kW, floats) plus ``issued_ms`` (the issue time,
epoch ms, integer). A later issue overwrites the steps it shares with an earlier one of the same
model, so a chart of the measurement shows, for every instant, the latest forecast made for it.
The device's last issue is the one with the largest ``issued_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from derim.storage.base import StoredForecast, StoredForecastPoint, from_epoch_ms

MEASUREMENT = "forecast"
MODEL_TAG = "model"
ISSUED_FIELD = "issued_ms"

LATEST_ISSUE = f'SELECT max("{ISSUED_FIELD}") FROM "{MEASUREMENT}" WHERE "device_id" = $device_id'
"""The device's last issue time (epoch ms); parameter ``$device_id``."""
ISSUE_POINTS = (
    f'SELECT "p10", "p50", "p90" FROM "{MEASUREMENT}" '
    f'WHERE "device_id" = $device_id AND "{ISSUED_FIELD}" = $issued_ms '
    f'GROUP BY "{MODEL_TAG}" ORDER BY time ASC'
)
"""The steps of one issue, by model; parameters ``$device_id`` and ``$issued_ms``."""
DROP_DEVICE = f'DROP SERIES FROM "{MEASUREMENT}" WHERE "device_id" = $id'


def forecast_lines(
    device_tag: str, model_tag: str, issued_ms: int, rows: Sequence[tuple[int, float, float, float]]
) -> bytes:
    """Line protocol of one issue: ``rows`` are ``(target ms, p10, p50, p90)``; the tag values
    come already escaped for line protocol."""
    key = f"{MEASUREMENT},device_id={device_tag},{MODEL_TAG}={model_tag}"
    return "\n".join(
        f"{key} p10={p10!r},p50={p50!r},p90={p90!r},{ISSUED_FIELD}={issued_ms:d}i {ms:d}"
        for ms, p10, p50, p90 in rows
    ).encode()


def latest_issue_ms(series: list[dict[str, Any]]) -> int | None:
    """The issue time found by ``LATEST_ISSUE``, or None when the device has no forecast."""
    if not series or not series[0].get("values"):
        return None
    value = series[0]["values"][0][1]
    return None if value is None else int(value)


def stored_forecast(
    device_id: str, issued_ms: int, series: list[dict[str, Any]]
) -> StoredForecast | None:
    """The issue read by ``ISSUE_POINTS`` (its first model, should two share the instant)."""
    if not series or not series[0].get("values"):
        return None
    first = series[0]
    points = tuple(
        StoredForecastPoint(from_epoch_ms(int(ms)), float(p10), float(p50), float(p90))
        for ms, p10, p50, p90 in first["values"]
    )
    model = str(first.get("tags", {}).get(MODEL_TAG, ""))
    return StoredForecast(device_id, model, from_epoch_ms(issued_ms), points)
