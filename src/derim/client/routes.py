"""Every HTTP route the client calls: method, path template and the query names it may send.

``tests/unit/client/test_client_openapi.py`` checks this table against the server's OpenAPI
document (and the stream routes against the app's router), so a renamed route or parameter
fails a test instead of a user's call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

PATH_PARAMETER = re.compile(r"\{(\w+)\}")
STREAM_FILTERS = ("device", "type", "group", "field", "events")
"""The query names of both stream routes (``api_key`` is never sent: keys go in headers)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One API operation as the client calls it."""

    method: str
    path: str
    """Template with ``{name}`` path parameters, as in the OpenAPI document."""
    query: tuple[str, ...] = ()

    @property
    def path_parameters(self) -> tuple[str, ...]:
        """The names in the path template, in order."""
        return tuple(PATH_PARAMETER.findall(self.path))

    def url(self, values: Mapping[str, str]) -> str:
        """The path with each parameter filled in, percent-encoded (``/`` included)."""
        if set(values) != set(self.path_parameters):
            raise ValueError(f"{self.path} takes {self.path_parameters}, not {sorted(values)}")
        return PATH_PARAMETER.sub(lambda m: quote(str(values[m.group(1)]), safe=""), self.path)


HEALTH = Route("GET", "/health")
METRICS = Route("GET", "/metrics")

LIST_DEVICES = Route("GET", "/api/v1/devices", ("device_type", "group"))
CREATE_DEVICE = Route("POST", "/api/v1/devices")
GET_DEVICE = Route("GET", "/api/v1/devices/{device_id}")
UPDATE_DEVICE = Route("PATCH", "/api/v1/devices/{device_id}")
DELETE_DEVICE = Route("DELETE", "/api/v1/devices/{device_id}", ("purge_telemetry",))
DEVICE_SESSIONS = Route("GET", "/api/v1/devices/{device_id}/sessions", ("state", "limit", "before"))
DEVICE_COMMANDS = Route("GET", "/api/v1/devices/{device_id}/commands", ("limit", "before"))

INGEST = Route("POST", "/api/v1/telemetry")
QUERY_TELEMETRY = Route(
    "GET",
    "/api/v1/telemetry/{device_id}",
    ("start", "end", "fields", "every", "agg", "limit", "cursor", "order", "format"),
)
LATEST = Route("GET", "/api/v1/telemetry/{device_id}/latest")
REJECTS = Route("GET", "/api/v1/ingest/rejects", ("limit", "before"))
FLEET_SUMMARY = Route("GET", "/api/v1/fleet/summary", ("stale_after_s",))

CONTROL = Route("POST", "/api/v1/control/{device_id}")
GET_COMMAND = Route("GET", "/api/v1/commands/{command_id}")

CREATE_SCHEDULE = Route("POST", "/api/v1/schedules")
LIST_SCHEDULES = Route("GET", "/api/v1/schedules", ("limit",))
GET_SCHEDULE = Route("GET", "/api/v1/schedules/{schedule_id}")
CANCEL_SCHEDULE = Route("DELETE", "/api/v1/schedules/{schedule_id}")

LIST_SITES = Route("GET", "/api/v1/sites")
GET_SITE = Route("GET", "/api/v1/sites/{site}")
SET_SITE_LIMIT = Route("PUT", "/api/v1/sites/{site}/limit")
CLEAR_SITE_LIMIT = Route("DELETE", "/api/v1/sites/{site}/limit")

FORECAST = Route("GET", "/api/v1/forecast/{device_id}", ("horizon", "model", "field"))
STORED_FORECAST = Route("GET", "/api/v1/forecast/{device_id}/stored")
TRAIN = Route("POST", "/api/v1/twin/{device_id}/train")
TRAINING_JOB = Route("GET", "/api/v1/twin/jobs/{job_id}")
MODELS = Route("GET", "/api/v1/twin/{device_id}/models", ("field",))
ANOMALIES = Route("GET", "/api/v1/twin/{device_id}/anomalies", ("start", "end", "field"))
SIMULATE = Route("POST", "/api/v1/twin/simulate")
WHAT_IF = Route("POST", "/api/v1/twin/whatif")
DISPATCH = Route("POST", "/api/v1/twin/dispatch")

ASYNCAPI = Route("GET", "/api/v1/stream/asyncapi.json")
LIST_KEYS = Route("GET", "/api/v1/keys")
CREATE_KEY = Route("POST", "/api/v1/keys")
REVOKE_KEY = Route("DELETE", "/api/v1/keys/{key_id}")
AUDIT = Route("GET", "/api/v1/audit", ("limit", "before", "target", "action"))

STREAM_WEBSOCKET = Route("GET", "/api/v1/stream", STREAM_FILTERS)
"""A WebSocket (the ``GET`` of its handshake); described by AsyncAPI, not OpenAPI."""
STREAM_SSE = Route("GET", "/api/v1/stream/sse", STREAM_FILTERS)
"""Server-Sent Events; described by AsyncAPI, not OpenAPI."""

STREAM_ROUTES = (STREAM_WEBSOCKET, STREAM_SSE)
REST_ROUTES: tuple[Route, ...] = tuple(
    value
    for value in list(globals().values())
    if isinstance(value, Route) and value not in STREAM_ROUTES
)
"""Every route above but the stream routes: each must be an operation of the OpenAPI document."""
