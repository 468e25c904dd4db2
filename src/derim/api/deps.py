"""FastAPI dependencies shared by the route modules."""

from __future__ import annotations

from fastapi import Request

from derim.services import Services


def get_services(request: Request) -> Services:
    """The running core attached to the application at start-up."""
    services: Services = request.app.state.services
    return services
