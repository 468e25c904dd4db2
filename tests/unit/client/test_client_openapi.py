"""The client against the server's OpenAPI document, so the two cannot drift: every route the
client calls is an operation with the same path and query parameters, every operation is called
by both clients (or excluded here, with the reason), bodies validate against the request
schemas, return types name the response schemas, and restated models have the same fields."""

from __future__ import annotations

import asyncio
import inspect
import re
import typing
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from types import NoneType
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from pydantic import BaseModel

from derim.api import views
from derim.api.app import create_app
from derim.api.routes import stream as stream_routes
from derim.client import AsyncDerimClient, DerimClient, calls, routes, twin_models
from derim.client.errors import FieldError
from derim.client.stream import WebSocketStream, stream_query
from derim.config import load_settings
from derim.control.schedules import ScheduleEntry, ScheduleRequest
from derim.models.command import CommandRequest, CommandType
from derim.models.device import DERDevice, DevicePatch
from derim.models.telemetry import MeterTelemetry

Operation = tuple[str, str]
"""An OpenAPI operation: upper-case method and path template."""

EXCLUDED: dict[Operation, str] = {}
"""Operations the client deliberately does not call, each with its reason (none today: a new
route fails ``test_every_operation_is_called_by_both_clients`` until the client covers it or
it is listed here)."""

RESTATED: list[type[BaseModel]] = [
    views.ConnectionStatus,
    views.DeviceView,
    views.RejectView,
    views.RejectPage,
    views.CreatedKey,
    views.StoredForecastResponse,
    twin_models.ForecastPoint,
    twin_models.ForecastResponse,
    twin_models.ModelsResponse,
    twin_models.DispatchResponse,
    FieldError,
]
"""Models the client reads responses into; each must match the OpenAPI component of its name."""

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ID = str(uuid.UUID(int=7))
SCENARIO = twin_models.Scenario.model_validate(
    {"start": NOW, "load_kw": [1.0, 2.0], "battery": {"capacity_kwh": 5, "power_kw": 2,
                                                    "initial_soc": 0.5, "strategy": "optimise"}}
)  # fmt: skip
# fmt: off
SAMPLE_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "health": ((), {}),
    "metrics": ((), {}),
    "list_devices": ((), {"device_type": "battery", "group": "site-a"}),
    "get_device": (("dev-1",), {}),
    "create_device": ((DERDevice.model_validate({"id": "dev-1", "device_type": "battery"}),), {}),
    "update_device": (("dev-1", DevicePatch(name="renamed")), {}),
    "delete_device": (("dev-1",), {"purge_telemetry": True}),
    "device_sessions": (("dev-1",), {"state": "active", "limit": 5, "before": 9}),
    "device_commands": (("dev-1",), {"limit": 5, "before": NOW}),
    "ingest": (
        ([MeterTelemetry(device_id="dev-1", timestamp=NOW, power_kw=1.0),
          {"device_id": "dev-1", "timestamp": NOW, "power_kw": 2.0}],),
        {},
    ),
    "telemetry": (
        ("dev-1",),
        {"start": NOW - timedelta(days=1), "end": NOW, "fields": ["power_kw", "voltage_v"],
         "every": "1h", "agg": "max", "order": "desc", "limit": 10, "cursor": "abc"},
    ),
    "iter_telemetry": (("dev-1",), {"every": "15m", "page_size": 10}),
    "telemetry_csv": (("dev-1",), {"start": "2030-01-01T00:00:00Z", "limit": 10}),
    "latest": (("dev-1",), {}),
    "rejects": ((), {"limit": 5, "before": 3}),
    "fleet_summary": ((), {"stale_after_s": 60}),
    "send_command": (("dev-1", CommandRequest(command=CommandType.SET_ACTIVE_POWER, value=1)), {}),
    "get_command": ((ID,), {}),
    "wait_for_command": ((ID,), {}),
    "create_schedule": (
        (ScheduleRequest(device_id="dev-1", entries=[
            ScheduleEntry(at=NOW, command=CommandType.SET_POWER_LIMIT, value=3.0)]),),
        {},
    ),
    "list_schedules": ((), {"limit": 3}),
    "get_schedule": ((ID,), {}),
    "cancel_schedule": ((ID,), {}),
    "list_sites": ((), {}),
    "get_site": (("carport",), {}),
    "set_site_limit": (("carport", 11.0), {}),
    "clear_site_limit": (("carport",), {}),
    "forecast": (("dev-1",), {"horizon": "6h", "model": "gbm", "field": "power_kw"}),
    "stored_forecast": (("dev-1",), {}),
    "train": (("dev-1", twin_models.TrainRequest(models=["gbm"], days=7)), {}),
    "training_job": (("job-1",), {}),
    "wait_for_training": (("job-1",), {}),
    "models": (("dev-1",), {"field": "power_kw"}),
    "anomalies": (("dev-1",), {"start": NOW - timedelta(days=1), "end": NOW}),
    "simulate": ((SCENARIO,), {}),
    "what_if": (("load-1",), {"pv_device_id": "pv-1", "changes": {"pv_scale": 1.5}}),
    "dispatch": (("dev-1", SCENARIO), {"send": True}),
    "asyncapi": ((), {}),
    "list_keys": ((), {}),
    "create_key": (("ci", "viewer"), {}),
    "revoke_key": (("key-1",), {}),
    "audit_log": ((), {"limit": 5, "before": 2, "target": "dev-1", "action": "control"}),
    "stream": ((), {"devices": ["dev-1"], "types": ["battery"], "fields": ["power_kw"],
                    "events": False}),
}
# fmt: on
"""One call of each public client method, with every optional argument it sends."""


class Sent(Exception):  # noqa: N818 - a signal carrying the request, not an error
    """Raised by the recording transport instead of answering."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__(request.url)
        self.request = request


def record(request: httpx.Request) -> httpx.Response:
    """The transport seam: capture the request instead of sending it."""
    request.read()
    raise Sent(request)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(load_settings(data_dir=tmp_path_factory.mktemp("openapi")))


@pytest.fixture(scope="module")
def openapi(app: Any) -> dict[str, Any]:
    document: dict[str, Any] = app.openapi()
    return document


def operations(openapi: dict[str, Any]) -> dict[Operation, dict[str, Any]]:
    """Every operation of the document by (METHOD, path)."""
    return {
        (method.upper(), path): operation
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }


def parameters(operation: dict[str, Any], place: str) -> set[str]:
    """The names of an operation's parameters in ``place`` (path, query, header)."""
    return {p["name"] for p in operation.get("parameters", ()) if p["in"] == place}


def match(openapi: dict[str, Any], request: httpx.Request) -> Operation:
    """The operation a request addresses (the most specific template when several fit)."""
    found = [
        (method, path)
        for method, path in operations(openapi)
        if method == request.method
        and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", path), request.url.path)
    ]
    assert found, f"{request.method} {request.url.path} is no operation of the API"
    return max(found, key=lambda op: len(re.sub(r"\{\w+\}", "", op[1])))


def public_methods(client: type) -> set[str]:
    return {
        name
        for name, member in vars(client).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def sent_by(client_type: type, name: str) -> httpx.Request:
    """The request a client method sends first (with the sample arguments)."""
    args, kwargs = SAMPLE_CALLS[name]
    transport = httpx.MockTransport(record)
    if client_type is DerimClient:
        with DerimClient("http://derim.test", api_key="k", transport=transport) as client:
            method = getattr(client, name)
            with pytest.raises(Sent) as sent:  # noqa: PT012 - a generator sends on first next()
                result = method(*args, **kwargs)
                result.__enter__() if isinstance(result, AbstractContextManager) else next(result)
        return sent.value.request

    async def run() -> None:
        async with AsyncDerimClient(
            "http://derim.test", api_key="k", transport=transport
        ) as client:
            result = getattr(client, name)(*args, **kwargs)
            await (anext(result) if inspect.isasyncgen(result) else result)

    with pytest.raises(Sent) as sent:
        asyncio.run(run())
    return sent.value.request


def test_every_route_is_an_operation_with_its_parameters(openapi: dict[str, Any]) -> None:
    """Each REST route of the client exists with the same path parameters, and every query
    name the client may send is one the operation takes."""
    ops = operations(openapi)
    for route in routes.REST_ROUTES:
        operation = ops.get((route.method, route.path))
        assert operation is not None, f"{route.method} {route.path} is not in the OpenAPI"
        assert parameters(operation, "path") == set(route.path_parameters), route
        assert set(route.query) <= parameters(operation, "query"), route


@pytest.mark.parametrize("client_type", [DerimClient, AsyncDerimClient])
def test_every_operation_is_called_by_both_clients(
    client_type: type, openapi: dict[str, Any]
) -> None:
    """Every public method sends a request the API describes (query names included), and
    together they call every operation but the listed exclusions."""
    methods = public_methods(client_type) - {"close", "aclose", "from_env", "stream"}
    assert methods <= set(SAMPLE_CALLS)
    called = set()
    ops = operations(openapi)
    for name in sorted(methods):
        request = sent_by(client_type, name)
        operation = match(openapi, request)
        assert set(request.url.params) <= parameters(ops[operation], "query"), name
        assert request.headers["authorization"] == "Bearer k"
        called.add(operation)
    assert not set(EXCLUDED) & called, "an excluded operation is called"
    assert set(ops) - set(EXCLUDED) == called


def test_the_clients_offer_the_same_methods() -> None:
    """The async client has every method of the sync one (aclose for close)."""
    assert public_methods(AsyncDerimClient) - {"aclose"} == public_methods(DerimClient) - {"close"}


def test_request_bodies_validate_against_the_request_schemas(openapi: dict[str, Any]) -> None:
    """Each body the client sends is valid for its operation's schema, and every operation
    that takes a body gets one."""
    ops = operations(openapi)
    with_body = set()
    for name in sorted(public_methods(DerimClient) - {"close", "from_env", "stream"}):
        request = sent_by(DerimClient, name)
        operation = match(openapi, request)
        body = ops[operation].get("requestBody")
        if body is None:
            assert not request.content, f"{name} sends a body its operation does not take"
            continue
        schema = body["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({**schema, "components": openapi["components"]})
        validator.validate(httpx.Response(200, content=request.content).json())
        with_body.add(operation)
    assert with_body == {op for op, spec in ops.items() if "requestBody" in spec}


def response_shape(operation: dict[str, Any]) -> tuple[str, str | None]:
    """What the first success answer of an operation holds: (model|list|object|any|none,
    component name)."""
    status = min(code for code in operation["responses"] if code.startswith("2"))
    content = operation["responses"][status].get("content")
    if content is None:
        return "none", None
    schema = content["application/json"]["schema"]
    if "$ref" in schema:
        return "model", schema["$ref"].rsplit("/", 1)[1]
    if schema.get("type") == "array":
        return "list", schema["items"]["$ref"].rsplit("/", 1)[1]
    return ("object", None) if schema.get("type") == "object" else ("any", None)


def annotation_shape(method: Callable[..., Any]) -> tuple[str, str | None]:
    """The same description of a client method's return annotation."""
    hints = typing.get_type_hints(method, localns=vars(twin_models))
    returned = hints["return"]
    if typing.get_origin(returned) is list:
        return "list", typing.get_args(returned)[0].__name__
    if typing.get_origin(returned) is dict:
        return "object", None
    if returned is NoneType:
        return "none", None
    if isinstance(returned, type) and issubclass(returned, BaseModel):
        return "model", returned.__name__
    return "any", None


def test_return_types_name_the_response_schemas(openapi: dict[str, Any]) -> None:
    """Each method returns the model (or list of it) its operation documents; operations that
    document no schema return whatever the client reads from them."""
    ops = operations(openapi)
    for name in sorted(public_methods(DerimClient) - {"close", "from_env", "stream"}):
        if name.startswith(("iter_", "wait_for_")):
            continue
        documented = response_shape(ops[match(openapi, sent_by(DerimClient, name))])
        if documented[0] != "any":
            assert annotation_shape(getattr(DerimClient, name)) == documented, name


@pytest.mark.parametrize("model", RESTATED, ids=lambda m: m.__name__)
def test_restated_models_match_their_components(
    model: type[BaseModel], openapi: dict[str, Any]
) -> None:
    """A model the client restates has the component's fields, required ones alike."""
    component = openapi["components"]["schemas"][model.__name__]
    mine = model.model_json_schema(mode="serialization")
    assert set(mine["properties"]) == set(component["properties"])
    assert set(mine.get("required", ())) == set(component.get("required", ()))


def test_stream_routes_match_the_server() -> None:
    """The stream routes exist (WebSocket and SSE, outside the OpenAPI document) and take every
    filter the client sends."""
    by_path = {getattr(route, "path", None): route for route in stream_routes.router.routes}
    websocket, sse = by_path[routes.STREAM_WEBSOCKET.path], by_path[routes.STREAM_SSE.path]
    assert isinstance(websocket, APIWebSocketRoute)
    assert isinstance(sse, APIRoute)
    for route in (websocket, sse):
        names = {param.alias for param in route.dependant.query_params}
        assert set(routes.STREAM_FILTERS) <= names


def test_stream_requests_use_the_stream_routes() -> None:
    """The sync stream asks the SSE route and the async one the WebSocket route, with the
    filters as query parameters and the key in a header."""
    request = sent_by(DerimClient, "stream")
    assert request.url.path == routes.STREAM_SSE.path
    assert dict(request.url.params) == {"device": "dev-1", "type": "battery",
                                        "field": "power_kw", "events": "false"}  # fmt: skip
    query = stream_query(["a", "b"], ["meter"], [], [], True)
    stream = WebSocketStream("https://derim.test/base", query, {}, 5)
    assert stream.url == "wss://derim.test/base/api/v1/stream?device=a%2Cb&type=meter"


def test_calls_refuse_query_names_their_route_does_not_take() -> None:
    """A call built with a query name outside its route's list is a bug caught at once."""
    with pytest.raises(ValueError, match="no query parameter"):
        calls.Call(routes.HEALTH, lambda r: None, query={"verbose": True})


def test_route_urls_encode_their_parameters() -> None:
    """Path parameters are percent-encoded, slashes included, so an id cannot change the
    route."""
    assert routes.GET_DEVICE.url({"device_id": "a/b c"}) == "/api/v1/devices/a%2Fb%20c"
    with pytest.raises(ValueError, match="takes"):
        routes.GET_DEVICE.url({})


def test_sample_calls_cover_no_stale_methods() -> None:
    """Every sample call names a method the clients have."""
    assert set(SAMPLE_CALLS) <= public_methods(DerimClient)
