"""Fetching and parsing IEEE 2030.5 resources over mutual TLS, and walking the discovery tree.

Resources are the pydantic-xml models of ``envoy-schema`` (``envoy_schema.server.schema.sep2``),
the schema package of the BSGIP envoy 2030.5 server. Bodies are parsed by a hardened lxml parser
(no DTD, no entities, no network, no huge trees) before the models see them. Library errors become
``TransportError`` (connection, TLS, 5xx), ``DeviceRejected`` (4xx) or ``ProtocolError``
(an undecodable body) here and nowhere else.

Discovery: DeviceCapability -> EndDeviceList -> each EndDevice's FunctionSetAssignmentsList ->
DERProgramList -> DERControlList and DefaultDERControl.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import pydantic
import pydantic_xml
from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlListResponse,
    DERControlResponse,
    DERProgramListResponse,
    DERProgramResponse,
)
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.end_device import EndDeviceListResponse, EndDeviceResponse
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse,
    FunctionSetAssignmentsResponse,
)
from envoy_schema.server.schema.sep2.identification import ListLink
from lxml import etree

from derim.errors import DeviceRejected, ProtocolError, TransportError
from derim.grid.sep2.config import Sep2Config

log = logging.getLogger(__name__)

SEP_XML = "application/sep+xml"
PAGE_SIZE = 50
"""Items asked for per page of a list (query ``s`` start, ``l`` limit)."""
MAX_PAGES = 20
"""Pages read of one list at most: a server that keeps paging is cut off there."""

Model = TypeVar("Model", bound=pydantic_xml.BaseXmlModel)
Item = TypeVar("Item")

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True
)


def parse(model: type[Model], body: bytes) -> Model:
    """``body`` as ``model``; ``ProtocolError`` naming the model when it is not one, or when
    it has a DTD (2030.5 bodies never do; entities are never expanded)."""
    try:
        root = etree.fromstring(body, _PARSER)
        if root.getroottree().docinfo.doctype:
            raise ProtocolError(f"not a valid {model.__name__}: a DTD is not allowed")
        return model.from_xml_tree(root)
    except (etree.XMLSyntaxError, pydantic.ValidationError, pydantic_xml.ParsingError) as exc:
        raise ProtocolError(f"not a valid {model.__name__}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"not a valid {model.__name__}: {exc}") from exc


def render(resource: pydantic_xml.BaseXmlModel) -> bytes:
    """A resource as the XML body of a request (empty optional elements left out)."""
    body = resource.to_xml(skip_empty=True)
    return body if isinstance(body, bytes) else body.encode()


@dataclass(frozen=True)
class _Reply:
    """A response's body and ``Location`` header."""

    body: bytes
    location: str | None


class Sep2Http:
    """An httpx client bound to one 2030.5 server, presenting the client certificate."""

    def __init__(self, config: Sep2Config, transport: httpx.AsyncBaseTransport | None = None):
        try:
            context = ssl.create_default_context(cafile=str(config.ca_cert))
            context.load_cert_chain(str(config.client_cert), str(config.client_key))
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"sep2 TLS material not usable: {exc}") from exc
        self._max_body = config.max_body_bytes
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            verify=context,
            timeout=config.timeout_s,
            headers={"Accept": SEP_XML},
            transport=transport,
        )

    async def get(
        self, href: str, model: type[Model], params: dict[str, int] | None = None
    ) -> Model:
        """GET ``href`` and parse it as ``model``."""
        reply = await self._request("GET", href, params=params)
        return parse(model, reply.body)

    async def send(self, method: str, href: str, resource: pydantic_xml.BaseXmlModel) -> str | None:
        """POST or PUT ``resource`` to ``href``; the ``Location`` of a created resource."""
        reply = await self._request(
            method, href, content=render(resource), headers={"Content-Type": SEP_XML}
        )
        return reply.location

    async def _request(
        self,
        method: str,
        href: str,
        *,
        params: dict[str, int] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Reply:
        """Send a request and read its body, stopping (``ProtocolError``) as soon as the body
        runs over ``max_body_bytes``: a larger body is never held in memory."""
        request = self._client.build_request(
            method, href, params=params, content=content, headers=headers
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code >= 500:
                    raise TransportError(f"sep2 {method} {href}: HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise DeviceRejected(f"sep2 {method} {href}: HTTP {response.status_code}")
                body = await self._capped_body(response, f"sep2 {method} {href}")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise TransportError(f"sep2 {method} {href}: {exc!r}") from exc
        return _Reply(body, response.headers.get("Location"))

    async def _capped_body(self, response: httpx.Response, what: str) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise ProtocolError(f"{what}: body of {declared} bytes, over {self._max_body}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_body:
                raise ProtocolError(f"{what}: body over {self._max_body} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


@dataclass
class Program:
    """One DERProgram with its controls and default control."""

    program: DERProgramResponse
    controls: list[DERControlResponse] = field(default_factory=list)
    default: DefaultDERControl | None = None


@dataclass
class Site:
    """One EndDevice and the DER programs assigned to it."""

    end_device: EndDeviceResponse
    programs: list[Program] = field(default_factory=list)


async def _pages(
    http: Sep2Http, link: ListLink | None, model: type[Model], items: str, kind: type[Item]
) -> list[Item]:
    """Every ``kind`` item of a paged list resource (attribute ``items`` of ``model``)."""
    if link is None:
        return []
    collected: list[Item] = []
    for _ in range(MAX_PAGES):
        page = await http.get(link.href, model, {"s": len(collected), "l": PAGE_SIZE})
        batch = [item for item in getattr(page, items) or [] if isinstance(item, kind)]
        collected.extend(batch)
        if not batch or len(collected) >= int(getattr(page, "all_", 0)):
            break
    return collected


async def _program(http: Sep2Http, program: DERProgramResponse) -> Program:
    controls = await _pages(
        http, program.DERControlListLink, DERControlListResponse, "DERControl", DERControlResponse
    )
    default = None
    if program.DefaultDERControlLink is not None:
        default = await http.get(program.DefaultDERControlLink.href, DefaultDERControl)
    return Program(program, controls, default)


async def _site(http: Sep2Http, end_device: EndDeviceResponse) -> Site:
    site = Site(end_device)
    seen: set[str] = set()
    assignments = await _pages(
        http,
        end_device.FunctionSetAssignmentsListLink,
        FunctionSetAssignmentsListResponse,
        "FunctionSetAssignments",
        FunctionSetAssignmentsResponse,
    )
    for fsa in assignments:
        programs = await _pages(
            http, fsa.DERProgramListLink, DERProgramListResponse, "DERProgram", DERProgramResponse
        )
        for program in programs:
            key = program.href or program.mRID
            if key not in seen:
                seen.add(key)
                site.programs.append(await _program(http, program))
    return site


async def discover(
    http: Sep2Http, dcap_path: str, wanted: Callable[[EndDeviceResponse], bool]
) -> tuple[DeviceCapabilityResponse, list[Site]]:
    """The DeviceCapability and each ``wanted`` EndDevice with its DER programs (deduplicated
    by href across its function set assignments)."""
    dcap = await http.get(dcap_path, DeviceCapabilityResponse)
    end_devices = await _pages(
        http, dcap.EndDeviceListLink, EndDeviceListResponse, "EndDevice", EndDeviceResponse
    )
    return dcap, [await _site(http, device) for device in end_devices if wanted(device)]
