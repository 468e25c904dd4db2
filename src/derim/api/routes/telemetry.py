"""``/api/v1/telemetry``: batch ingest over HTTP, range queries, latest values."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from derim.api.auth import Operator, Viewer
from derim.api.deps import get_services
from derim.api.responses import JSONResponse
from derim.errors import InvalidRequestError, UnsupportedMediaTypeError
from derim.ingest import validate_readings
from derim.models.common import UtcDatetime
from derim.services import Services
from derim.storage.base import (
    Aggregation,
    Interval,
    Order,
    TelemetryQuery,
    decode_cursor,
    to_epoch_ms,
)

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])
ServicesDep = Annotated[Services, Depends(get_services)]
DEFAULT_WINDOW = timedelta(hours=24)

INGEST_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["device_id", "timestamp"],
                        "description": "A reading: device_id, timestamp (ISO 8601; naive = UTC) "
                        "and any canonical fields of the device's telemetry class.",
                    },
                }
            }
        },
    }
}


@router.post("", status_code=202, openapi_extra=INGEST_BODY_SCHEMA)
async def ingest(request: Request, services: ServicesDep, caller: Operator) -> JSONResponse:
    """Store a JSON array of readings; returns once they are stored (or durably spooled).

    Each reading is validated with its device's telemetry class; 404 for an unknown device, 422
    naming each bad field (``body[3].soc_percent``), 413 above the body size limit, 415 for a
    body declared as anything but JSON (no ``Content-Type`` is read as JSON).
    """
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type.lower() != "application/json" and not media_type.lower().endswith("+json"):
        raise UnsupportedMediaTypeError(f"the body must be application/json, not {media_type}")
    body = await request.body()
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("body", f"invalid JSON: {exc}") from None
    records = validate_readings(items, services.registry.find)
    await services.ingest(records)
    return JSONResponse({"accepted": len(records)}, status_code=202)


@router.get("/{device_id}")
async def query_telemetry(
    device_id: str,
    services: ServicesDep,
    caller: Viewer,
    start: Annotated[
        UtcDatetime | None, Query(description="Inclusive; default end - 24 h.")
    ] = None,
    end: Annotated[UtcDatetime | None, Query(description="Exclusive; default now.")] = None,
    fields: Annotated[
        str | None, Query(description="Comma-separated field names; default all with data.")
    ] = None,
    every: Annotated[Interval | None, Query(description="Downsample to this bucket.")] = None,
    agg: Annotated[Aggregation, Query(description="Bucket aggregation.")] = Aggregation.MEAN,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Rows per page.")] = 10_000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    order: Annotated[Order, Query(description="Time order.")] = Order.ASC,
    format: Annotated[Literal["json", "csv"], Query(description="Response format.")] = "json",
) -> Response:
    """A page of a device's readings in ``[start, end)``, raw or downsampled.

    ``next_cursor`` (also in the ``Link`` header) is set whenever more data lies in the window:
    a page never silently cuts off data.
    """
    services.registry.get(device_id)
    end = end or datetime.now(UTC)
    if start is None:
        try:
            start = end - DEFAULT_WINDOW
        except OverflowError:
            raise InvalidRequestError("start", "end - 24 h is before year 1: give start") from None
    query = TelemetryQuery(
        device_id=device_id,
        start_ms=to_epoch_ms(start),
        end_ms=to_epoch_ms(end),
        fields=tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (),
        every=every,
        agg=agg,
        limit=limit,
        order=order,
        after_ms=decode_cursor(cursor) if cursor else None,
    )
    page = await services.store.query(query)
    headers = {}
    if page.next_cursor:
        headers["Link"] = f'<?cursor={page.next_cursor}>; rel="next"'
        headers["X-Next-Cursor"] = page.next_cursor
    if format == "csv":
        return Response(_to_csv(page.records_json), media_type="text/csv", headers=headers)
    head = orjson.dumps(
        {
            "device_id": device_id,
            "start": start,
            "end": end,
            "every": every,
            "agg": agg if every else None,
            "count": page.count,
            "next_cursor": page.next_cursor,
        },
        option=orjson.OPT_UTC_Z,
    )
    return JSONResponse(head[:-1] + b',"records":' + page.records_json + b"}", headers=headers)


def _to_csv(records_json: bytes) -> str:
    records: list[dict[str, Any]] = orjson.loads(records_json)
    out = io.StringIO()
    columns = list(records[0]) if records else ["timestamp"]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


@router.get("/{device_id}/latest")
async def latest(device_id: str, services: ServicesDep, caller: Viewer) -> JSONResponse:
    """The newest stored reading of a device; 404 if the device is unknown or has no data."""
    services.registry.get(device_id)
    found = await services.store.latest([device_id])
    if device_id not in found:
        return JSONResponse({"detail": f"device {device_id!r} has no readings"}, status_code=404)
    return JSONResponse({"device_id": device_id, **found[device_id]})
