"""A JSON response rendered by orjson (datetimes as ISO 8601, UUIDs as strings)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """``application/json`` rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``; pre-encoded ``bytes`` pass through unchanged."""
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)
