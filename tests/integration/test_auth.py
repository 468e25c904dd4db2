"""Authentication and roles over HTTP: every route (but /health and the docs) refuses an
anonymous caller and a role too weak for it; keys are created, used and revoked; what is done
is audited, across restarts."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_server import ApiServer

from derim.config import load_settings
from derim.errors import ConfigError
from derim.security.keys import KeyStore, Role

PUBLIC = {("GET", "/health")}
REQUIRED: dict[tuple[str, str], Role] = {
    ("GET", "/metrics"): Role.VIEWER,
    ("GET", "/api/v1/devices"): Role.VIEWER,
    ("POST", "/api/v1/devices"): Role.ADMIN,
    ("GET", "/api/v1/devices/{device_id}"): Role.VIEWER,
    ("PATCH", "/api/v1/devices/{device_id}"): Role.ADMIN,
    ("DELETE", "/api/v1/devices/{device_id}"): Role.ADMIN,
    ("GET", "/api/v1/devices/{device_id}/sessions"): Role.VIEWER,
    ("GET", "/api/v1/devices/{device_id}/commands"): Role.VIEWER,
    ("POST", "/api/v1/telemetry"): Role.OPERATOR,
    ("GET", "/api/v1/telemetry/{device_id}"): Role.VIEWER,
    ("GET", "/api/v1/telemetry/{device_id}/latest"): Role.VIEWER,
    ("GET", "/api/v1/ingest/rejects"): Role.VIEWER,
    ("GET", "/api/v1/fleet/summary"): Role.VIEWER,
    ("POST", "/api/v1/control/{device_id}"): Role.OPERATOR,
    ("GET", "/api/v1/commands/{command_id}"): Role.VIEWER,
    ("GET", "/api/v1/schedules"): Role.VIEWER,
    ("POST", "/api/v1/schedules"): Role.OPERATOR,
    ("GET", "/api/v1/schedules/{schedule_id}"): Role.VIEWER,
    ("DELETE", "/api/v1/schedules/{schedule_id}"): Role.OPERATOR,
    ("GET", "/api/v1/forecast/{device_id}"): Role.VIEWER,
    ("GET", "/api/v1/forecast/{device_id}/stored"): Role.VIEWER,
    ("POST", "/api/v1/twin/{device_id}/train"): Role.OPERATOR,
    ("GET", "/api/v1/twin/jobs/{job_id}"): Role.VIEWER,
    ("GET", "/api/v1/twin/{device_id}/models"): Role.VIEWER,
    ("GET", "/api/v1/twin/{device_id}/anomalies"): Role.VIEWER,
    ("POST", "/api/v1/twin/simulate"): Role.VIEWER,
    ("POST", "/api/v1/twin/whatif"): Role.VIEWER,
    ("POST", "/api/v1/twin/dispatch"): Role.OPERATOR,
    ("GET", "/api/v1/stream/asyncapi.json"): Role.VIEWER,
    ("GET", "/api/v1/sites"): Role.VIEWER,
    ("GET", "/api/v1/sites/{site}"): Role.VIEWER,
    ("PUT", "/api/v1/sites/{site}/limit"): Role.OPERATOR,
    ("DELETE", "/api/v1/sites/{site}/limit"): Role.OPERATOR,
    ("GET", "/api/v1/keys"): Role.ADMIN,
    ("POST", "/api/v1/keys"): Role.ADMIN,
    ("DELETE", "/api/v1/keys/{key_id}"): Role.ADMIN,
    ("GET", "/api/v1/audit"): Role.ADMIN,
}
"""The role each route needs: the policy, stated once (docs/security.md repeats it)."""


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[ApiServer, dict[Role, str]]]:
    """The API with authentication on, and a token for each role."""
    data = tmp_path / "data"
    store = KeyStore(data / "keys.db")
    store.open_sync()
    tokens = {role: store.create(f"test-{role.value}", role)[1] for role in Role}
    store.close()
    server = ApiServer(data, auth_enabled=True).start()
    yield server, tokens
    server.stop()


def routes(server: ApiServer) -> list[tuple[str, str]]:
    """Every (method, path) of the app's OpenAPI document."""
    paths = server.app.openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


def concrete(path: str) -> str:
    """A path with each parameter filled in."""
    return re.sub(r"\{(\w+)\}", lambda m: f"x-{m.group(1)}", path)


def strongest_below(role: Role) -> Role | None:
    """The strongest role that is still too weak for ``role``."""
    order = list(Role)
    index = order.index(role)
    return order[index - 1] if index else None


async def test_every_route_refuses_anonymous_and_too_weak_callers(
    secured: tuple[ApiServer, dict[Role, str]],
) -> None:
    """Each route is in the policy table; without a key it is 401 (with a Bearer challenge),
    with a bad key 401, with the next weaker role 403, and with its role neither."""
    server, tokens = secured
    served = routes(server)
    assert sorted(set(served) - PUBLIC) == sorted(REQUIRED), "a route has no stated role"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get("/health")).json()["auth"] == "enabled"
        for (method, path), role in REQUIRED.items():
            url = concrete(path)
            anonymous = await client.request(method, url, json={})
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            forged = await client.request(
                method, url, json={}, headers={"Authorization": "Bearer derim_0000_nope"}
            )
            assert forged.status_code == 401, (method, path)
            weaker = strongest_below(role)
            if weaker is not None:
                denied = await client.request(
                    method, url, json={}, headers={"X-API-Key": tokens[weaker]}
                )
                assert denied.status_code == 403, (method, path, weaker)
            allowed = await client.request(
                method, url, json={}, headers={"Authorization": f"Bearer {tokens[role]}"}
            )
            assert allowed.status_code not in (401, 403), (method, path, allowed.text)


async def test_keys_are_created_used_and_revoked_and_everything_is_audited(
    secured: tuple[ApiServer, dict[Role, str]],
) -> None:
    """An admin creates an operator key over the API; it controls but cannot register
    devices; once revoked it is refused; the audit log names who did each thing."""
    server, tokens = secured
    admin = {"Authorization": f"Bearer {tokens[Role.ADMIN]}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        created = await client.post(
            "/api/v1/keys", json={"name": "dispatcher", "role": "operator"}, headers=admin
        )
        assert created.status_code == 201
        key_id, token = created.json()["key_id"], created.json()["token"]
        listed = (await client.get("/api/v1/keys", headers=admin)).json()
        assert all("token" not in key and "secret" not in str(key) for key in listed)
        operator = {"X-API-Key": token}
        device = {"id": "bat-1", "device_type": "battery"}
        denied = await client.post("/api/v1/devices", json=device, headers=operator)
        assert denied.status_code == 403
        assert (await client.post("/api/v1/devices", json=device, headers=admin)).status_code == 201
        refused = await client.post(
            "/api/v1/control/bat-1", json={"command": "connect"}, headers=operator
        )
        assert refused.status_code == 422  # a pushed device takes no commands: still audited
        assert (await client.delete(f"/api/v1/keys/{key_id}", headers=admin)).status_code == 200
        gone = await client.get("/api/v1/devices", headers=operator)
        assert gone.status_code == 401
        entries = (await client.get("/api/v1/audit", headers=admin)).json()
        trail = [(e["action"], e["target"], e["actor"]) for e in reversed(entries)]
        admin_label = f"test-admin ({listed[2]['key_id']})"
        assert trail == [
            ("key.create", key_id, admin_label),
            ("device.create", "bat-1", admin_label),
            ("control", "bat-1", f"dispatcher ({key_id})"),
            ("key.revoke", key_id, admin_label),
        ]
        assert entries[1]["result"].startswith("refused: ")


def test_the_audit_log_is_append_only(tmp_path: Path) -> None:
    """The audit table refuses updates and deletes, even from SQL."""
    server = ApiServer(tmp_path / "data").start()
    server.stop()
    db = sqlite3.connect(tmp_path / "data" / "audit.db")
    db.execute(
        "INSERT INTO audit (at, actor, action, target, result, detail)"
        " VALUES ('t', 'a', 'control', 'x', 'ok', '{}')"
    )
    db.commit()
    for statement in ("UPDATE audit SET result = 'forged'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.close()


def test_each_key_has_its_own_request_budget(tmp_path: Path) -> None:
    """Past its burst a key gets 429 with Retry-After, while another key is still served."""
    data = tmp_path / "data"
    store = KeyStore(data / "keys.db")
    store.open_sync()
    busy, calm = (store.create(name, Role.VIEWER)[1] for name in ("busy", "calm"))
    store.close()
    server = ApiServer(data, auth_enabled=True, rate_limit_per_s=0.5, rate_limit_burst=3).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            codes = [
                client.get("/api/v1/devices", headers={"X-API-Key": busy}).status_code
                for _ in range(4)
            ]
            assert codes == [200, 200, 200, 429]
            limited = client.get("/api/v1/devices", headers={"X-API-Key": busy})
            assert int(limited.headers["retry-after"]) >= 1
            assert client.get("/api/v1/devices", headers={"X-API-Key": calm}).status_code == 200
    finally:
        server.stop()


def test_cors_admits_only_the_configured_origins(tmp_path: Path) -> None:
    """A preflight from a configured origin is allowed; any other origin gets no CORS grant;
    a wildcard origin is refused at start."""
    server = ApiServer(tmp_path / "data", cors_origins=["https://dash.example"]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:

            def preflight(origin: str) -> httpx.Response:
                return client.options(
                    "/api/v1/devices",
                    headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
                )

            granted = preflight("https://dash.example")
            assert granted.headers["access-control-allow-origin"] == "https://dash.example"
            assert "access-control-allow-origin" not in preflight("https://evil.example").headers
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="cors_origins"):
        load_settings(data_dir=tmp_path, cors_origins=["*"])


def test_devices_may_only_point_at_allowed_networks(tmp_path: Path) -> None:
    """A Modbus or IEC 61850 host outside ``allowed_networks`` (by default a public address)
    is 422 on create and on change; inside, it is accepted."""
    server = ApiServer(tmp_path / "data", allowed_networks=["127.0.0.0/8"]).start()

    def meter(host: str) -> dict[str, object]:
        return {"protocol": "modbus", "host": host, "port": 1502, "unit_id": 1,
                "profile": "generic_meter", "poll_interval_s": 60}  # fmt: skip

    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            outside = client.post(
                "/api/v1/devices",
                json={"id": "m-out", "device_type": "meter", "connection": meter("192.168.1.5")},
            )
            assert outside.status_code == 422
            assert "allowed_networks" in outside.text
            inside = client.post(
                "/api/v1/devices",
                json={"id": "m-in", "device_type": "meter", "connection": meter("127.0.0.1")},
            )
            assert inside.status_code == 201
            moved = client.patch("/api/v1/devices/m-in", json={"connection": meter("8.8.8.8")})
            assert moved.status_code == 422
            ied = client.post("/api/v1/devices", json={
                "id": "bess-out", "device_type": "battery", "connection": {
                    "protocol": "iec61850", "host": "192.168.1.6", "ied_name": "BESS1",
                    "profile": "generic_der_battery"}})  # fmt: skip
            assert ied.status_code == 422
            assert "allowed_networks" in ied.text
            assert [d["id"] for d in client.get("/api/v1/devices").json()] == ["m-in"]
    finally:
        server.stop()
