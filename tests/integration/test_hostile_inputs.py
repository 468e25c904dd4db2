"""A fixed battery of hostile inputs over HTTP: non-finite and huge numbers, control and
bidirectional characters, injection strings, deep nesting, wrong content types, oversized
bodies and huge lists. Each is refused with a 4xx (the specific code where one is clear) and
afterwards the server holds exactly what it held before: the same devices, no readings, no
commands, no site limits, no ingest counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from api_server import ApiServer

METER = "meter-1"
BATTERY = "batt-1"
DEVICES = [
    {"id": METER, "name": "Meter", "device_type": "meter"},
    {
        "id": BATTERY,
        "name": "Battery",
        "device_type": "battery",
        "rated_power_kw": 5.0,
        # A polled battery takes commands, so a hostile one that got past validation would be
        # recorded (and tried); nothing listens on the discard port, so nothing is ever sent.
        "connection": {
            "protocol": "modbus",
            "host": "127.0.0.1",
            "port": 9,
            "profile": "generic_battery",
            "poll_interval_s": 60,
        },
    },
]
MAX_BODY = 1024 * 1024
"""The server's body limit in these tests: small enough that an oversized body is cheap to send,
large enough that a 100k-element list of small items gets through to validation."""
TIMESTAMP = "2024-01-01T00:00:00Z"
WHOLE_HISTORY = {"start": "1970-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z", "limit": 1}

NON_FINITE_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
"""Not JSON (NaN, Infinity) or JSON that overflows a double (1e400)."""
NON_FINITE_STRINGS = ['"NaN"', '"Infinity"', '"-inf"', '"nan"']
HUGE_NUMBERS = ["1e308", "-1e308", str(10**400), str(-(10**400))]
NUMBERS = NON_FINITE_TOKENS + NON_FINITE_STRINGS + HUGE_NUMBERS

INJECTIONS = [
    "'; DROP TABLE telemetry; --",
    '" OR 1=1',
    'x" ; DROP MEASUREMENT derim',
    "meter-1' OR '1'='1",
    'meter-1" OR "1"="1',
    "power_kw FROM telemetry; --",
]
WEIRD_TEXT = [
    "\u202emeter-1",  # right-to-left override: renders as "1-retem"
    "meter\u2066-1\u2069",  # left-to-right isolate
    "meter\x00-1",  # NUL
    "meter\x07\x1b[2J-1",  # bell and an ANSI escape
    "meter\n-1",
    "meter\r\n-1",
    "meter\x7f-1",  # DEL
]
EMOJI = "\u26a1\U0001f50b"
ARABIC = "\u0645\u0639\u062f\u0627\u062f"
BAD_IDS = [*WEIRD_TEXT, EMOJI, ARABIC, *INJECTIONS, "../" + METER, "x" * 129]


def nested(depth: int) -> str:
    """JSON text with ``depth`` nested arrays around a number."""
    return "[" * depth + "1" + "]" * depth


def nested_object(depth: int) -> str:
    """JSON text with ``depth`` nested objects."""
    return '{"a":' * depth + "1" + "}" * depth


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the status(es) it must get."""

    name: str
    method: str
    path: str
    expect: tuple[int, ...]
    body: str | bytes | None = None
    content_type: str | None = "application/json"
    params: dict[str, str] | None = None
    chunked: bool = False

    def send(self, client: httpx.Client) -> httpx.Response:
        """Send the request as it is, without httpx re-encoding anything."""
        headers = {}
        if self.content_type is not None and self.body is not None:
            headers["Content-Type"] = self.content_type
        content: Any = self.body.encode() if isinstance(self.body, str) else self.body
        if self.chunked and content is not None:
            data = content
            content = (data[i : i + 65536] for i in range(0, len(data), 65536))
        return client.request(
            self.method, self.path, content=content, params=self.params, headers=headers
        )


def segment(text: str) -> str:
    """``text`` as one percent-encoded path segment (``/`` included)."""
    return quote(text, safe="")


def raw_object(**fields: str) -> str:
    """A JSON object whose values are raw JSON text, spliced in as they are (``NaN`` too)."""
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


def reading(**fields: str) -> str:
    """A JSON reading of the meter with raw JSON values spliced in."""
    return raw_object(
        **{"device_id": json.dumps(METER), "timestamp": json.dumps(TIMESTAMP), **fields}
    )


OVERSIZED_BATCH = "[" + ",".join([reading(power_kw="1")] * (MAX_BODY // 40)) + "]"


def telemetry_cases() -> list[Hostile]:
    """``POST /api/v1/telemetry``."""
    post = "/api/v1/telemetry"
    cases = [
        Hostile(f"power_kw={n}", "POST", post, (422,), "[" + reading(power_kw=n) + "]")
        for n in NUMBERS
    ]
    cases += [
        Hostile(f"energy_kwh={n}", "POST", post, (422,), "[" + reading(energy_kwh=n) + "]")
        for n in ["1e308", str(10**400), "NaN"]
    ]
    cases += [
        Hostile(f"timestamp={n}", "POST", post, (422,), "[" + reading(timestamp=n) + "]")
        for n in ['"NaN"', "1e308", str(10**400), '"+99999-01-01T00:00:00Z"', "-1e308"]
    ]
    cases += [
        Hostile(f"device_id={i!r}", "POST", post, (404,), "[" + reading(device_id=i) + "]")
        for i in [json.dumps(text) for text in BAD_IDS]
    ]
    cases += [
        Hostile("field name injection", "POST", post, (422,),
                "[" + reading(**{"power_kw\\u0000; DROP TABLE telemetry": "1"}) + "]"),
        Hostile("nested 10k arrays", "POST", post, (422,), nested(10_000)),
        Hostile("nested 10k in a field", "POST", post, (422,),
                "[" + reading(power_kw=nested(10_000)) + "]"),
        Hostile("nested 10k objects", "POST", post, (422,), "[" + nested_object(10_000) + "]"),
        Hostile("text/plain", "POST", post, (415,), "[" + reading(power_kw="1") + "]",
                content_type="text/plain"),
        Hostile("form data", "POST", post, (415,),
                f"device_id={METER}&timestamp={TIMESTAMP}&power_kw=1",
                content_type="application/x-www-form-urlencoded"),
        Hostile("xml", "POST", post, (415,),
                f"<reading><device_id>{METER}</device_id><power_kw>1</power_kw></reading>",
                content_type="application/xml"),
        Hostile("not JSON", "POST", post, (422,), "[{device_id: meter-1}]"),
        Hostile("invalid UTF-8", "POST", post, (422,), b'[{"device_id": "\xff\xfe"}]'),
        Hostile("above the body limit", "POST", post, (413,), OVERSIZED_BATCH),
        Hostile("above the body limit, chunked", "POST", post, (413,), OVERSIZED_BATCH,
                chunked=True),
        Hostile("100k readings (above the limit)", "POST", post, (413,),
                "[" + ",".join([reading(power_kw="1")] * 100_000) + "]"),
        Hostile("100k empty readings", "POST", post, (422,),
                "[" + ",".join(["{}"] * 100_000) + "]"),
        Hostile("100k numbers", "POST", post, (422,), json.dumps(list(range(100_000)))),
        Hostile("100k-element list in a field", "POST", post, (422,),
                "[" + reading(power_kw=json.dumps([1] * 100_000)) + "]"),
    ]  # fmt: skip
    return cases


def device(**fields: str) -> str:
    """A JSON device with raw JSON values spliced in."""
    return raw_object(**{"id": '"new-1"', "device_type": '"battery"', **fields})


def modbus(**fields: str) -> str:
    """A JSON Modbus connection (to loopback) with raw JSON values spliced in."""
    defaults = {"protocol": '"modbus"', "host": '"127.0.0.1"', "profile": '"generic_battery"'}
    return raw_object(**{**defaults, **fields})


def body_cases(method: str, path: str, make: Any) -> list[Hostile]:
    """Malformed bodies any JSON route must refuse the same way.

    A body declared as text, form data or XML is 422 here: FastAPI does not decode it and the
    route's model then finds no object (``POST /api/v1/telemetry``, which reads the body itself,
    answers 415).
    """
    return [
        Hostile("nested 10k arrays", method, path, (422,), nested(10_000)),
        Hostile("nested 10k objects", method, path, (422,), nested_object(10_000)),
        Hostile("text/plain", method, path, (422,), make(), content_type="text/plain"),
        Hostile("form data", method, path, (422,), "id=new-1&name=x",
                content_type="application/x-www-form-urlencoded"),
        Hostile("xml", method, path, (422,), "<device><id>new-1</id></device>",
                content_type="application/xml"),
        Hostile("not JSON", method, path, (422,), "{id: new-1}"),
        Hostile("invalid UTF-8", method, path, (422,), b'{"name": "\xff\xfe"}'),
        Hostile("above the body limit", method, path, (413,),
                make(name=json.dumps("x" * MAX_BODY))),
        Hostile("above the body limit, chunked", method, path, (413,),
                make(name=json.dumps("x" * MAX_BODY)), chunked=True),
        Hostile("100k-element list", method, path, (422,),
                make(groups=json.dumps(["g"] * 100_000))),
    ]  # fmt: skip


def device_cases() -> list[Hostile]:
    """``POST /api/v1/devices``."""
    post = "/api/v1/devices"
    cases = [
        Hostile(f"rated_power_kw={n}", "POST", post, (422,), device(rated_power_kw=n))
        for n in NUMBERS
    ]
    cases += [
        Hostile(f"altitude_m={n}", "POST", post, (422,),
                device(location=raw_object(latitude="1", longitude="1", altitude_m=n)))
        for n in ["1e308", "NaN", str(10**400)]
    ]  # fmt: skip
    cases += [
        Hostile(f"port={n}", "POST", post, (422,),
                device(connection=modbus(port=n)))
        for n in [str(10**400), "1e308", "NaN", "-1"]
    ]  # fmt: skip
    cases += [
        Hostile(f"id={text!r}", "POST", post, (422,), device(id=json.dumps(text)))
        for text in BAD_IDS
    ]
    cases += [
        Hostile(f"name={text!r}", "POST", post, (422,), device(name=json.dumps(text)))
        for text in WEIRD_TEXT
    ]
    cases += [
        Hostile(f"group={text!r}", "POST", post, (422,), device(groups=json.dumps([text])))
        for text in [*WEIRD_TEXT, *INJECTIONS, EMOJI]
    ]
    cases += [
        Hostile(f"host={text!r}", "POST", post, (422,),
                device(connection=modbus(host=json.dumps(text))))
        # A 64-character label fails IDNA encoding, before any name lookup is made.
        for text in ["127.0.0.1\x00", "127.0.0.1\n", "\u202e127.0.0.1", "x" * 254,
                     "a" * 64 + ".invalid"]
    ]  # fmt: skip
    cases += [
        Hostile(f"profile={text!r}", "POST", post, (422,),
                device(connection=modbus(profile=json.dumps(text))))
        for text in ["generic\x00battery", "../../../../etc/passwd", "/etc/hostname.yaml",
                     "/dev/zero.yaml", ".", "\u202egeneric_battery"]
    ]  # fmt: skip
    return cases + body_cases("POST", post, device)


def patch(**fields: str) -> str:
    """A JSON device patch with raw JSON values spliced in."""
    return raw_object(**(fields or {"name": '"renamed"'}))


def patch_cases() -> list[Hostile]:
    """``PATCH /api/v1/devices/{id}``."""
    path = f"/api/v1/devices/{BATTERY}"
    cases = [
        Hostile(f"rated_power_kw={n}", "PATCH", path, (422,), patch(rated_power_kw=n))
        for n in NUMBERS
    ]
    cases += [
        Hostile(f"name={text!r}", "PATCH", path, (422,), patch(name=json.dumps(text)))
        for text in WEIRD_TEXT
    ]
    cases += [
        Hostile(f"path {text!r}", "PATCH", f"/api/v1/devices/{segment(text)}", (404,),
                patch())
        for text in BAD_IDS
    ]  # fmt: skip
    return cases + body_cases("PATCH", path, patch)


def command(**fields: str) -> str:
    """A JSON command with raw JSON values spliced in."""
    return raw_object(**{"command": '"set_active_power"', "value": "1", **fields})


def control_cases() -> list[Hostile]:
    """``POST /api/v1/control/{id}``."""
    path = f"/api/v1/control/{BATTERY}"
    cases = [Hostile(f"value={n}", "POST", path, (422,), command(value=n)) for n in NUMBERS]
    cases += [
        Hostile(f"priority={n}", "POST", path, (422,), command(priority=n))
        for n in [str(10**400), "1e308", "NaN"]
    ]
    cases += [
        Hostile(f"expires_at={n}", "POST", path, (422,), command(expires_at=n))
        for n in ['"NaN"', "1e308", str(10**400), '"+99999-01-01T00:00:00Z"']
    ]
    cases += [
        Hostile(f"unit={text!r}", "POST", path, (422,), command(unit=json.dumps(text)))
        for text in [*WEIRD_TEXT, EMOJI, INJECTIONS[0][:16], INJECTIONS[1]]
    ]
    cases += [
        Hostile("parameters with a 100k-element list", "POST", path, (422,),
                command(parameters=json.dumps({"connector_id": [1] * 100_000}))),
        Hostile("parameters nested 10k", "POST", path, (422,),
                command(parameters='{"a": ' + nested(10_000) + "}")),
        Hostile("parameters nested 300", "POST", path, (422,),
                command(parameters='{"a": ' + nested(300) + "}")),
        Hostile("command injection", "POST", path, (422,),
                command(command=json.dumps(INJECTIONS[0]))),
    ]  # fmt: skip
    cases += [
        Hostile(f"path {text!r}", "POST", f"/api/v1/control/{segment(text)}", (404,),
                command())
        for text in BAD_IDS
    ]  # fmt: skip
    return cases + body_cases("POST", path, command)


def limit(value: str = "10") -> str:
    """A JSON site limit with a raw JSON value spliced in."""
    return raw_object(limit_kw=value)


def site_cases() -> list[Hostile]:
    """``PUT /api/v1/sites/{site}/limit``."""
    path = "/api/v1/sites/depot/limit"
    cases = [Hostile(f"limit_kw={n}", "PUT", path, (422,), limit(n)) for n in NUMBERS]
    cases += [
        Hostile(f"site {text!r}", "PUT", f"/api/v1/sites/{segment(text)}/limit", (422,),
                limit())
        for text in [*WEIRD_TEXT, EMOJI, *INJECTIONS, "a" * 65]
    ]  # fmt: skip
    cases.append(Hostile("site ../depot", "PUT", "/api/v1/sites/..%2Fdepot/limit", (404,), limit()))
    cases += [
        Hostile("extra field", "PUT", path, (422,), '{"limit_kw": 10, "sql": "1 OR 1=1"}'),
        Hostile("nested 10k arrays", "PUT", path, (422,), nested(10_000)),
        Hostile("nested 10k in the value", "PUT", path, (422,), limit(nested(10_000))),
        Hostile("text/plain", "PUT", path, (422,), limit(), content_type="text/plain"),
        Hostile("form data", "PUT", path, (422,), "limit_kw=10",
                content_type="application/x-www-form-urlencoded"),
        Hostile("xml", "PUT", path, (422,), "<limit_kw>10</limit_kw>",
                content_type="application/xml"),
        Hostile("above the body limit", "PUT", path, (413,),
                '{"limit_kw": 10, "pad": "%s"}' % ("x" * MAX_BODY)),
        Hostile("100k-element list", "PUT", path, (422,), json.dumps([10] * 100_000)),
    ]  # fmt: skip
    return cases


def query_cases() -> list[Hostile]:
    """The query parameters (and path) of ``GET /api/v1/telemetry/{id}``."""
    path = f"/api/v1/telemetry/{METER}"
    values = [
        "NaN", "Infinity", "1e308", "-1e308", str(10**400), "", "\x00",
        "+99999-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59", *INJECTIONS, *WEIRD_TEXT, EMOJI,
    ]  # fmt: skip
    cases = [
        Hostile(f"{name}={value!r}", "GET", path, (422,), params={name: value})
        for name in ["start", "end", "every", "agg", "limit", "order", "format", "cursor"]
        for value in values
        if not (name == "cursor" and value == "")
    ]
    cases += [
        Hostile(f"fields={value!r}", "GET", path, (422,), params={"fields": value})
        for value in [*INJECTIONS, *WEIRD_TEXT, EMOJI, "nope," * 1_000]
    ]
    cases += [
        Hostile("cursor beyond any instant", "GET", path, (422,),
                params={"cursor": "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"}),
        Hostile("cursor with a negative huge instant", "GET", path, (422,),
                params={"cursor": "djE6LTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"}),
        Hostile("start after end", "GET", path, (422,),
                params={"start": "2030-01-01T00:00:00Z", "end": "2020-01-01T00:00:00Z"}),
    ]  # fmt: skip
    cases += [
        Hostile(f"path {text!r}", "GET", f"/api/v1/telemetry/{segment(text)}", (404,))
        for text in BAD_IDS
    ]
    return cases


def ids(cases: list[Hostile]) -> list[str]:
    """Readable, ASCII test ids."""
    return [c.name.encode("ascii", "backslashreplace").decode()[:60] for c in cases]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API with a meter (pushing over HTTP) and a Modbus battery registered."""
    api = ApiServer(tmp_path_factory.mktemp("hostile"), max_body_bytes=MAX_BODY).start()
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for body in DEVICES:
            assert client.post("/api/v1/devices", json=body).status_code == 201
    yield api
    api.stop()


@pytest.fixture
def client(server: ApiServer) -> Iterator[httpx.Client]:
    """An HTTP client of the server."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def snapshot(client: httpx.Client) -> dict[str, Any]:
    """What the server holds: devices, each device's readings and commands, site limits and
    the ingest counters."""
    # A device's live connection status (the battery's failed polls) is not something stored.
    devices = [
        {k: v for k, v in d.items() if k != "status"} for d in client.get("/api/v1/devices").json()
    ]
    held: dict[str, Any] = {"devices": devices, "sites": client.get("/api/v1/sites").json()}
    for item in DEVICES:
        device_id = item["id"]
        page = client.get(f"/api/v1/telemetry/{device_id}", params=WHOLE_HISTORY).json()
        held[f"readings {device_id}"] = page["count"]
        held[f"commands {device_id}"] = client.get(f"/api/v1/devices/{device_id}/commands").json()
    health = client.get("/health").json()
    held["ingest"] = {k: health["ingest"][k] for k in ("received", "stored", "spooled")}
    held["series"] = health["storage"].get("devices")
    return held


def refused_and_nothing_stored(client: httpx.Client, case: Hostile) -> None:
    """Send ``case``; it gets one of its statuses, and the server holds what it held."""
    before = snapshot(client)
    response = case.send(client)
    assert response.status_code in case.expect, (case.name, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert isinstance(response.json().get("detail"), str)
    assert snapshot(client) == before


def test_baseline_holds_two_devices_and_nothing_else(client: httpx.Client) -> None:
    """The snapshot the battery compares against: two devices, no readings, no commands."""
    held = snapshot(client)
    assert sorted(d["id"] for d in held["devices"]) == sorted([METER, BATTERY])
    assert held["readings meter-1"] == held["readings batt-1"] == 0
    assert held["commands meter-1"] == held["commands batt-1"] == []
    assert held["sites"] == []
    assert held["ingest"] == {"received": 0, "stored": 0, "spooled": 0}


TELEMETRY = telemetry_cases()


@pytest.mark.parametrize("case", TELEMETRY, ids=ids(TELEMETRY))
def test_hostile_telemetry_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile telemetry batch is refused whole (4xx) and no reading is stored."""
    refused_and_nothing_stored(client, case)


DEVICE_CASES = device_cases()


@pytest.mark.parametrize("case", DEVICE_CASES, ids=ids(DEVICE_CASES))
def test_hostile_device_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile device registration is refused (4xx) and no device is added."""
    refused_and_nothing_stored(client, case)


PATCH_CASES = patch_cases()


@pytest.mark.parametrize("case", PATCH_CASES, ids=ids(PATCH_CASES))
def test_hostile_patch_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile device patch is refused (4xx) and the device is unchanged."""
    refused_and_nothing_stored(client, case)


CONTROL_CASES = control_cases()


@pytest.mark.parametrize("case", CONTROL_CASES, ids=ids(CONTROL_CASES))
def test_hostile_command_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile command is refused (4xx) before it is recorded or sent."""
    refused_and_nothing_stored(client, case)


SITE_CASES = site_cases()


@pytest.mark.parametrize("case", SITE_CASES, ids=ids(SITE_CASES))
def test_hostile_site_limit_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile site limit is refused (4xx) and no limit is set."""
    refused_and_nothing_stored(client, case)


QUERY_CASES = query_cases()


@pytest.mark.parametrize("case", QUERY_CASES, ids=ids(QUERY_CASES))
def test_hostile_telemetry_query_is_refused(client: httpx.Client, case: Hostile) -> None:
    """A hostile telemetry query is refused (4xx), never a 5xx nor a page of data."""
    refused_and_nothing_stored(client, case)


def test_emoji_and_scripts_in_a_name_are_kept_as_given(tmp_path: Path) -> None:
    """Printable Unicode (emoji, Arabic) is a valid display name and comes back unchanged."""
    api = ApiServer(tmp_path).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            name = f"{EMOJI} \u0645\u0639\u062f\u0627\u062f"
            created = http.post("/api/v1/devices", json={"id": "named", "name": name})
            assert created.status_code == 201, created.text
            assert http.get("/api/v1/devices/named").json()["name"] == name
    finally:
        api.stop()
