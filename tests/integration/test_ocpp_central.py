"""The OCPP central system against library charge points over real WebSockets: boot,
status, sessions in both versions, malformed and deviating messages, the handshake's refusals,
security profiles 1 and 2, reconnects and commands to offline chargers."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from certificates import make_certificates
from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from ocpp_helpers import basic, central, charger, raw_socket, url
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from async_helpers import until
from derim.errors import TransportError
from derim.models.command import CommandRequest, CommandType
from derim.models.common import ConnectorStatus, DeviceType
from derim.models.device import DERDevice, OcppConnection
from derim.models.session import SessionState
from derim.services import Services
from derim.storage.base import TelemetryQuery

BOOT16 = call16.BootNotification(
    charge_point_vendor="Acme", charge_point_model="Wallbox 22", firmware_version="4.2.1"
)
BOOT201 = call201.BootNotification(
    charging_station={"vendor_name": "Acme", "model": "Wallbox 22", "firmware_version": "4.2.1"},
    reason="PowerUp",
)


async def answer(ws: ClientConnection) -> Any:
    """The next frame from the central, within 5 s."""
    return await asyncio.wait_for(ws.recv(), 5)


async def stored(services: Services, device_id: str, *fields: str) -> list[dict[str, Any]]:
    """Every stored reading of a device, with the given fields."""
    page = await services.store.query(TelemetryQuery(device_id, 0, 2**42, fields=fields))
    records: list[dict[str, Any]] = json.loads(page.records_json)
    return records


@pytest.mark.parametrize(("version", "boot"), [("1.6", BOOT16), ("2.0.1", BOOT201)])
async def test_boot_registers_the_charger_with_its_nameplate(
    tmp_path: Path, version: str, boot: object
) -> None:
    """A charger that connects and boots is registered as an EV charger with its vendor,
    model and firmware, online, in its OCPP version."""
    async with central(tmp_path) as services, charger(services, "CP-boot", version) as point:
        answer = await point.call(boot)
        assert answer.status == "Accepted"
        assert answer.interval == services.settings.ocpp_heartbeat_interval_s
        device = services.registry.get("CP-boot")
        assert device.device_type is DeviceType.EV_CHARGER
        assert (device.manufacturer, device.model, device.firmware_version) == (
            "Acme",
            "Wallbox 22",
            "4.2.1",
        )
        status = services.status(device)
        assert status is not None
        assert status.state.value == "online"
        assert services.ocpp is not None
        assert services.ocpp.view("CP-boot").ocpp_version == version


async def test_status_notifications_are_kept_and_stored(tmp_path: Path) -> None:
    """Each connector's last status is shown with the charger and stored as a reading."""
    async with central(tmp_path) as services, charger(services, "CP-status") as point:
        await point.call(BOOT16)
        await point.call(
            call16.StatusNotification(
                connector_id=2,
                error_code="GroundFailure",
                status="Faulted",
                timestamp="2026-11-26T08:00:00Z",
            )
        )
        assert services.ocpp is not None
        (connector,) = services.ocpp.view("CP-status").connectors
        assert (connector.connector_id, connector.status, connector.error_code) == (
            2,
            ConnectorStatus.FAULTED,
            "GroundFailure",
        )
        rows = await stored(services, "CP-status", "connector_id", "connector_status")
        assert rows[-1]["connector_status"] == "faulted"
        assert rows[-1]["connector_id"] == 2


async def test_a_whole_1_6_session_with_meter_values(tmp_path: Path) -> None:
    """StartTransaction gets a DERIM transaction id; meter values during the session carry its
    energy so far; StopTransaction (with transaction data) ends it with energy and duration."""
    async with central(tmp_path) as services, charger(services, "CP-16") as point:
        await point.call(BOOT16)
        start = await point.call(
            call16.StartTransaction(
                connector_id=1, id_tag="TAG1", meter_start=10_000, timestamp="2026-11-26T08:00:00Z"
            )
        )
        assert start.id_tag_info["status"] == "Accepted"
        tx = start.transaction_id
        await point.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=tx,
                meter_value=[
                    {
                        "timestamp": "2026-11-26T08:10:00Z",
                        "sampledValue": [
                            {"value": "11250", "measurand": "Energy.Active.Import.Register"},
                            {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
                        ],
                    }
                ],
            )
        )
        running = services.sessions.find_active("CP-16", str(tx))
        assert running is not None
        assert running.energy_kwh == pytest.approx(1.25)
        await point.call(
            call16.StopTransaction(
                meter_stop=14_500,
                timestamp="2026-11-26T08:30:00Z",
                transaction_id=tx,
                reason="EVDisconnected",
                transaction_data=[
                    {
                        "timestamp": "2026-11-26T08:30:00Z",
                        "sampledValue": [{"value": "14500", "context": "Transaction.End"}],
                    }
                ],
            )
        )
        (session,) = await services.sessions.history("CP-16")
        assert session.state is SessionState.COMPLETED
        assert session.energy_kwh == pytest.approx(4.5)
        assert session.duration_s == 1800
        assert (session.id_tag, session.stop_reason) == ("TAG1", "EVDisconnected")
        rows = await stored(services, "CP-16", "power_kw", "session_energy_kwh", "transaction_id")
        during = [r for r in rows if r["power_kw"] is not None]
        assert during[0]["power_kw"] == pytest.approx(-7.4)
        assert during[0]["session_energy_kwh"] == pytest.approx(1.25)
        assert during[0]["transaction_id"] == str(tx)


def event(kind: str, seq: int, energy_wh: float, **extra: Any) -> call201.TransactionEvent:
    """A TransactionEvent of transaction ``T-1`` on EVSE 1 with an energy register reading."""
    return call201.TransactionEvent(
        event_type=kind,
        timestamp=f"2026-11-26T09:{seq:02d}:00Z",
        trigger_reason="MeterValuePeriodic",
        seq_no=seq,
        transaction_info={"transaction_id": "T-1", **extra},
        evse={"id": 1, "connector_id": 1},
        meter_value=[
            {
                "timestamp": f"2026-11-26T09:{seq:02d}:00Z",
                "sampled_value": [
                    {
                        "value": energy_wh,
                        "measurand": "Energy.Active.Import.Register",
                        "unit_of_measure": {"unit": "Wh"},
                    }
                ],
            }
        ],
    )


async def test_a_whole_2_0_1_session_from_transaction_events(tmp_path: Path) -> None:
    """Started, Updated and Ended events make one session (a repeated Started does not make
    a second), with the charging state stored and the energy between the registers."""
    async with central(tmp_path) as services, charger(services, "CS-201", "2.0.1") as point:
        await point.call(BOOT201)
        started = event("Started", 0, 5000.0)
        started.id_token = {"id_token": "TOKEN9", "type": "ISO14443"}
        answer = await point.call(started)
        assert answer.id_token_info["status"] == "Accepted"
        await point.call(started)
        await point.call(event("Updated", 15, 8000.0, charging_state="Charging"))
        assert services.sessions.find_active("CS-201", "T-1") is not None
        await point.call(event("Ended", 40, 12_000.0, stopped_reason="Local"))
        (session,) = await services.sessions.history("CS-201")
        assert (session.transaction_id, session.id_tag, session.stop_reason) == (
            "T-1",
            "TOKEN9",
            "Local",
        )
        assert session.energy_kwh == pytest.approx(7.0)
        assert session.duration_s == 40 * 60
        rows = await stored(services, "CS-201", "connector_status", "session_energy_kwh")
        assert "charging" in [r["connector_status"] for r in rows]
        assert max(r["session_energy_kwh"] or 0 for r in rows) == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("version", "not_json", "bad_type"),
    [
        ("1.6", "FormationViolation", "PropertyConstraintViolation"),
        ("2.0.1", "RpcFrameworkError", "MessageTypeNotSupported"),
    ],
)
async def test_malformed_frames_get_call_errors_and_are_kept(
    tmp_path: Path, version: str, not_json: str, bad_type: str
) -> None:
    """A frame that is not JSON gets a CallError with id -1, an unknown message type one with
    the frame's id; both are dead-lettered with the raw frame and counted."""
    async with central(tmp_path) as services, raw_socket(services, "CP-bad", version) as ws:
        await ws.send("{this is not json")
        reply = json.loads(await answer(ws))
        assert reply[:3] == [4, "-1", not_json]
        await ws.send(json.dumps([7, "abc", "Heartbeat", {}]))
        reply = json.loads(await answer(ws))
        assert reply[:3] == [4, "abc", bad_type]
        rejects = await services.rejects.latest()
        assert [r.payload for r in rejects] == [
            b'[7, "abc", "Heartbeat", {}]',
            b"{this is not json",
        ]
        assert services.ocpp is not None
        assert services.ocpp.counters.malformed == 2


async def test_an_unknown_optional_field_is_tolerated_unless_strict(tmp_path: Path) -> None:
    """A vendor's extra field is dropped and counted in lenient mode; in strict mode the same
    message gets a FormationViolation naming the field."""
    frame = json.dumps([2, "m1", "Heartbeat", {"vendorUptime": 12}])
    async with central(tmp_path) as services, raw_socket(services, "CP-lenient") as ws:
        await ws.send(frame)
        reply = json.loads(await answer(ws))
        assert reply[0] == 3
        assert "currentTime" in reply[2]
        assert services.ocpp is not None
        assert services.ocpp.counters.dropped_fields == 1
    async with central(tmp_path / "strict", ocpp_strict=True) as services:
        async with raw_socket(services, "CP-strict") as ws:
            await ws.send(frame)
            reply = json.loads(await answer(ws))
        assert reply[:3] == [4, "m1", "FormationViolation"]
        assert "vendorUptime" in reply[3]


STATUS16 = {"connectorId": "one", "errorCode": "NoError", "status": "Available"}
STATUS201 = {"timestamp": "2026-11-26T08:00:00Z", "connectorStatus": "Broken", "evseId": 1}


@pytest.mark.parametrize(
    ("version", "frame", "code"),
    [
        ("1.6", [2, "r1", "BootNotification", {"chargePointVendor": "A"}],
         "OccurenceConstraintViolation"),
        ("1.6", [2, "r2", "StatusNotification", STATUS16], "TypeConstraintViolation"),
        ("2.0.1", [2, "r3", "StatusNotification", {**STATUS201, "connectorId": 1}],
         "TypeConstraintViolation"),
        ("2.0.1", [2, "r4", "Heartbeat", {}, "extra"], "RpcFrameworkError"),
        ("2.0.1", [2, "r5", "Heartbeat", {}], None),
    ],
)  # fmt: skip
async def test_real_violations_get_the_matching_call_error(
    tmp_path: Path, version: str, frame: list[Any], code: str | None
) -> None:
    """A missing required field, a wrong type or a value outside its enumeration is answered
    with the spec's CallError code, naming the field; nothing is stored from it."""
    async with central(tmp_path) as services, raw_socket(services, "CP-viol", version) as ws:
        await ws.send(json.dumps(frame))
        reply = json.loads(await answer(ws))
        assert reply[:3] == ([3, frame[1], reply[2]] if code is None else [4, frame[1], code])
        assert await stored(services, "CP-viol", "connector_status") == []


async def test_a_bad_sampled_value_is_dead_lettered_and_the_rest_stored(tmp_path: Path) -> None:
    """One unreadable value in MeterValues does not cost the charger its other values: they
    are stored, the bad one is kept in the rejects with its reason."""
    async with central(tmp_path) as services, charger(services, "CP-meter") as point:
        await point.call(
            call16.MeterValues(
                connector_id=1,
                meter_value=[
                    {
                        "timestamp": "2026-11-26T08:00:00Z",
                        "sampledValue": [
                            {"value": "lots", "measurand": "Power.Active.Import", "unit": "W"},
                            {"value": "231.5", "measurand": "Voltage", "unit": "V"},
                        ],
                    }
                ],
            )
        )
        (row,) = await stored(services, "CP-meter", "voltage_v", "power_kw")
        assert row["voltage_v"] == 231.5
        assert row["power_kw"] is None
        (reject,) = await services.rejects.latest()
        assert "lots" in reject.reason
        assert reject.topic == "CP-meter"


async def test_the_handshake_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    """A wrong path is 404, no OCPP subprotocol 400, and an unknown charger 403 when only known
    chargers are accepted, while a registered one connects."""
    known = DERDevice(
        id="known-cp",
        device_type=DeviceType.EV_CHARGER,
        connection=OcppConnection(protocol="ocpp", charge_point_id="CP-KNOWN"),
    )
    async with central(tmp_path, ocpp_register_unknown=False, devices=[known]) as services:
        base = url(services, "x").removesuffix("/ocpp/x")
        attempts = [
            (f"{base}/chargers/CP-KNOWN", ["ocpp1.6"], 404),
            (f"{base}/ocpp/CP-KNOWN", ["mqtt"], 400),
            (f"{base}/ocpp/CP-STRANGER", ["ocpp1.6"], 403),
        ]
        for address, protocols, status in attempts:
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(address, subprotocols=protocols)  # type: ignore[arg-type]
            assert refused.value.response.status_code == status
        async with charger(services, "CP-KNOWN") as point:
            await point.call(BOOT16)
        assert services.registry.get("known-cp").manufacturer == "Acme"
        assert services.registry.find("CP-STRANGER") is None


async def test_security_profile_1_checks_each_chargers_password(tmp_path: Path) -> None:
    """Basic auth: no credentials, another charger's user or a wrong password is 401; the
    charger's own id and password connect."""
    passwords = {"CP-A": "secret-a", "CP-B": "secret-b"}
    async with central(tmp_path, ocpp_security_profile=1, ocpp_passwords=passwords) as services:
        for headers in (None, basic("CP-B", "secret-b"), basic("CP-A", "secret-b")):
            with pytest.raises(InvalidStatus) as refused:
                async with charger(services, "CP-A", headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        async with charger(services, "CP-A", headers=basic("CP-A", "secret-a")) as point:
            assert (await point.call(BOOT16)).status == "Accepted"


async def test_security_profile_2_serves_basic_auth_over_tls(tmp_path: Path) -> None:
    """With TLS and Basic auth a charger that trusts the CA connects over wss://."""
    ca, cert, key = make_certificates(tmp_path)
    settings = {
        "ocpp_security_profile": 2,
        "ocpp_passwords": {"CP-TLS": "pw-tls"},
        "ocpp_tls_cert": cert,
        "ocpp_tls_key": key,
    }
    trust = ssl.create_default_context(cafile=str(ca))
    async with central(tmp_path / "data", **settings) as services:
        async with charger(services, "CP-TLS", headers=basic("CP-TLS", "pw-tls"), tls=trust) as p:
            assert (await p.call(BOOT16)).status == "Accepted"
        with pytest.raises(InvalidStatus):
            async with charger(services, "CP-TLS", headers=basic("CP-TLS", "nope"), tls=trust):
                pass


async def test_a_reconnecting_charger_replaces_its_old_connection(tmp_path: Path) -> None:
    """The second connection of a charger takes over; the first is closed by the central and
    the charger stays online."""
    async with central(tmp_path) as services, charger(services, "CP-twice") as first:
        await first.call(BOOT16)
        async with charger(services, "CP-twice") as second:
            await second.call(BOOT16)
            await until(lambda: first.ws.close_code is not None)
            assert first.ws.close_code == 1000
            assert services.ocpp is not None
            assert services.ocpp.link("CP-twice").websocket is not None
            await second.call(call16.Heartbeat())
            status = services.status(services.registry.get("CP-twice"))
            assert status is not None
            assert status.state.value == "online"


async def test_a_command_to_an_offline_charger_fails_at_once(tmp_path: Path) -> None:
    """Once a charger has disconnected, a command fails fast with TransportError and the
    charger shows offline."""
    async with central(tmp_path) as services:
        async with charger(services, "CP-gone") as point:
            await point.call(BOOT16)
        device = services.registry.get("CP-gone")
        await until(lambda: services.status(device).state.value == "offline")  # type: ignore[union-attr]
        assert services.ocpp is not None
        began = time.monotonic()
        with pytest.raises(TransportError, match="not connected"):
            await services.ocpp.send(device, CommandRequest(command=CommandType.RESET))
        assert time.monotonic() - began < 1.0


async def test_a_charger_that_calls_back_with_a_call_error_is_reported(tmp_path: Path) -> None:
    """A CallError from the charger comes back to DERIM's caller as an ``OCPPError``."""
    async with central(tmp_path) as services, charger(services, "CP-noimpl") as point:
        await point.call(BOOT16)
        assert services.ocpp is not None
        link = services.ocpp.link("CP-noimpl")
        with pytest.raises(OCPPError):
            await services.ocpp.call(link, call16.Reset(type="Soft"))
