"""``create_app(settings)``: the FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from derim import __version__
from derim.api.errors import install_error_handlers
from derim.api.limits import BodyLimitMiddleware
from derim.api.responses import JSONResponse
from derim.api.routes import (
    admin,
    control,
    dashboard,
    devices,
    fleet,
    health,
    rejects,
    schedules,
    sites,
    stream,
    telemetry,
    twin,
)
from derim.api.streaming import StreamHub
from derim.config import Settings
from derim.services import running_services


def create_app(settings: Settings) -> FastAPI:
    """The REST API over a core opened for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as services:
            app.state.services = services
            hub = StreamHub(
                services.bus,
                services.events,
                services.registry,
                buffer=settings.stream_buffer,
                max_clients=settings.stream_max_clients,
                snapshot=services.status_events,
            )
            hub.start()
            app.state.stream_hub = hub
            try:
                yield
            finally:
                await hub.aclose()

    app = FastAPI(
        title="DERIM",
        version=__version__,
        description="Distributed Energy Resource Integration Middleware: devices, telemetry, "
        "fleet views. Power is positive when delivered to the grid; times are UTC.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            allow_credentials=False,
        )
    install_error_handlers(app)
    for module in (
        health,
        devices,
        telemetry,
        rejects,
        fleet,
        control,
        schedules,
        sites,
        twin,
        stream,
        admin,
        dashboard,
    ):
        app.include_router(module.router)
    return app
