"""``/api/v1/ingest/rejects``: inputs that could not become records, with their raw payloads."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from derim.api.auth import Viewer
from derim.api.deps import get_services
from derim.api.views import RejectPage, RejectView
from derim.services import Services
from derim.storage.rejects import Reject

router = APIRouter(prefix="/api/v1/ingest", tags=["ingest"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("/rejects")
async def rejects(
    services: ServicesDep,
    caller: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Only rejects with smaller ids.")] = None,
) -> RejectPage:
    """The dead-letter store: every rejected input is counted, logged and kept here."""
    found = await services.rejects.latest(limit, before)
    views = [_view(reject) for reject in found]
    more = len(found) == limit and views[-1].id > 1
    return RejectPage(
        total_since_start=services.rejects.count,
        rejects=views,
        next_before=views[-1].id if more else None,
    )


def _view(reject: Reject) -> RejectView:
    encoding: Literal["utf-8", "base64"] = "utf-8"
    try:
        payload = reject.payload.decode("utf-8")
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(reject.payload).decode("ascii"), "base64"
    return RejectView(
        id=reject.id or 0,
        received_at=reject.received_at,
        source=reject.source,
        topic=reject.topic,
        reason=reject.reason,
        payload=payload,
        payload_encoding=encoding,
    )
