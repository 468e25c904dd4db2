"""A JSON response rendered by orjson (datetimes as ISO 8601, UUIDs as strings)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    """``application/json`` rendered with orjson.

    A subclass of Starlette's ``JSONResponse`` so that FastAPI documents each route's response
    model in the OpenAPI schema (for any other response class it writes ``{"type": "string"}``).
    """

    def render(self, content: Any) -> bytes:
        """Serialise ``content``; pre-encoded ``bytes`` pass through unchanged."""
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)
