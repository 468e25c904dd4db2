"""``/health`` and ``/metrics``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from derim import __version__
from derim.adapters.mqtt.adapter import MqttAdapter
from derim.adapters.ocpp.central import CentralSystem
from derim.api.auth import Viewer
from derim.api.deps import get_services
from derim.api.metrics import render_metrics
from derim.errors import DerimError
from derim.services import Services

router = APIRouter(tags=["health"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Version, storage state, spool depth and ingest counters.

    ``status`` is ``ok``, or ``degraded`` while storage is unreachable (data is being spooled).
    """
    try:
        storage = await services.store.health()
        state: dict[str, Any] = {
            "backend": storage.backend,
            "reachable": storage.reachable,
            "detail": storage.detail,
            **storage.extra,
        }
    except DerimError as exc:
        state = {"backend": services.store.name, "reachable": False, "detail": str(exc)}
    bus = services.bus.counters
    return {
        "status": "ok" if state["reachable"] else "degraded",
        "auth": "enabled" if services.settings.auth_enabled else "DISABLED: the API is open",
        "version": __version__,
        "uptime_s": round(time.time() - services.started_at, 3),
        "storage": state,
        "spool_depth": services.spool.depth,
        "ingest": {
            "received": bus.received,
            "written": bus.written,
            "dropped": bus.dropped,
            "pending": services.bus.pending,
            "stored": services.writer.counters.stored,
            "spooled": services.writer.counters.spooled,
            "replayed": services.writer.counters.replayed,
            "rejected": services.rejects.count,
        },
        "mqtt": None if services.mqtt is None else _mqtt(services.mqtt),
        "ocpp": None if services.ocpp is None else _ocpp(services.ocpp),
        "grid_links": {link.name: link.state for link in services.grid_links},
    }


def _mqtt(mqtt: MqttAdapter) -> dict[str, Any]:
    """The broker connection and its message counters."""
    counters = mqtt.counters
    return {
        "broker": f"{mqtt.client.host}:{mqtt.client.port}",
        "connected": mqtt.client.connected,
        "last_error": mqtt.client.last_error,
        "messages": counters.messages,
        "records": counters.records,
        "rejected": counters.rejected,
    }


def _ocpp(central: CentralSystem) -> dict[str, Any]:
    """The central system's port, connected chargers and message counters."""
    counters = central.counters
    return {
        "port": central.port,
        "connected": central.connected,
        "connections": counters.connections,
        "messages": counters.messages,
        "call_errors": counters.call_errors,
        "malformed": counters.malformed,
        "refused_handshakes": counters.refused_handshakes,
        "dropped_fields": counters.dropped_fields,
        "active_sessions": len(central.sessions.active()),
    }


@router.get("/metrics")
async def metrics(services: ServicesDep, caller: Viewer) -> Response:
    """Prometheus text exposition."""
    return Response(render_metrics(services), media_type=CONTENT_TYPE_LATEST)
