"""``GET /`` and ``/static/*``: the operator dashboard, plain files with no build step.

The page and its assets are public (they hold no data); everything they show is fetched from the
API with the key the operator enters, so the API's roles apply as for any other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from derim.errors import NotFoundError

router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
"""The files served under ``/static/``, by name: nothing else in the folder is reachable."""
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
PAGE_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
"""The page loads only its own scripts and styles and talks only to this origin."""


@router.get("/")
async def dashboard() -> FileResponse:
    """The dashboard page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    """One of the page's scripts or style sheets; 404 for any other name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError("static file", name)
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)
