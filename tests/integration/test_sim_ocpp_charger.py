"""The simulated OCPP charger against a minimal CSMS built in this file from the ``ocpp``
library's central-system side, over websockets on loopback, for OCPP 1.6 and 2.0.1."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp import v16, v201
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from async_helpers import until
from derim.errors import TransportError
from derim.sim.ocpp_charger import SimulatedCharger
from derim.tasks import cancel_and_wait

pytestmark = pytest.mark.integration

CP = "CP1"
METER_S = 0.05


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Csms:
    """What the CSMS saw: every call (charge point id, action, payload), the live central
    system and websocket per charge point, and the Authorization headers of the connections."""

    url: str = ""
    heartbeat_s: int = 60
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stations: dict[str, Any] = field(default_factory=dict)
    sockets: dict[str, ServerConnection] = field(default_factory=dict)
    auth: list[str | None] = field(default_factory=list)

    def of(self, action: str) -> list[dict[str, Any]]:
        """Payloads of the calls of ``action``, oldest first."""
        return [payload for _, name, payload in self.calls if name == action]

    def readings(self) -> list[dict[str, float]]:
        """Meter readings in transactions: {measurand[.phase]: value}, oldest first."""
        values = [
            m for p in self.of("MeterValues") if p.get("transaction_id") for m in p["meter_value"]
        ]
        values += [
            m
            for p in self.of("TransactionEvent")
            if p["event_type"] == "Updated"
            for m in p["meter_value"]
        ]
        values.sort(key=lambda m: str(m["timestamp"]))
        return [
            {
                ".".join(filter(None, [s.get("measurand"), s.get("phase")])): float(s["value"])
                for s in m["sampled_value"]
            }
            for m in values
        ]

    def power_w(self) -> float | None:
        """Total power (W) of the latest meter reading in a transaction."""
        readings = self.readings()
        return readings[-1]["Power.Active.Import"] if readings else None

    def statuses(self, connector: int = 1) -> list[str]:
        """Statuses reported for ``connector`` (EVSE), oldest first."""
        return [
            p.get("status") or p["connector_status"]
            for p in self.of("StatusNotification")
            if p.get("connector_id" if "status" in p else "evse_id") == connector
        ]


class Central16(v16.ChargePoint):
    """Minimal OCPP 1.6 central system: accepts everything but the id tag BADTAG."""

    def __init__(self, cp_id: str, ws: ServerConnection, csms: Csms) -> None:
        super().__init__(cp_id, ws, response_timeout=5)
        self.csms = csms
        self.next_tx = 100

    def _seen(self, action: str, payload: dict[str, Any]) -> None:
        self.csms.calls.append((self.id, action, payload))

    @on("BootNotification")
    def on_boot(self, **kwargs: Any) -> Any:
        self._seen("BootNotification", kwargs)
        return v16.call_result.BootNotification(
            current_time=_now(), interval=self.csms.heartbeat_s, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat(self, **kwargs: Any) -> Any:
        self._seen("Heartbeat", kwargs)
        return v16.call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **kwargs: Any) -> Any:
        self._seen("StatusNotification", kwargs)
        return v16.call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **kwargs: Any) -> Any:
        self._seen("Authorize", {"id_tag": id_tag, **kwargs})
        status = "Invalid" if id_tag == "BADTAG" else "Accepted"
        return v16.call_result.Authorize(id_tag_info={"status": status})

    @on("StartTransaction")
    def on_start(self, **kwargs: Any) -> Any:
        self._seen("StartTransaction", kwargs)
        self.next_tx += 1
        return v16.call_result.StartTransaction(
            transaction_id=self.next_tx, id_tag_info={"status": "Accepted"}
        )

    @on("StopTransaction")
    def on_stop(self, **kwargs: Any) -> Any:
        self._seen("StopTransaction", kwargs)
        return v16.call_result.StopTransaction()

    @on("MeterValues")
    def on_meter_values(self, **kwargs: Any) -> Any:
        self._seen("MeterValues", kwargs)
        return v16.call_result.MeterValues()

    async def ask(self, payload: Any) -> Any:
        """Call the charge point; a CallError raises."""
        return await self.call(payload, suppress=False)

    async def set_tx_limit(self, profile_id: int, limit: float, unit: str, tx: str | None) -> str:
        """SetChargingProfile: a TxProfile on connector 1 with one period; the status."""
        profile = {
            "charging_profile_id": profile_id,
            "stack_level": 1,
            "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Relative",
            "transaction_id": None if tx is None else int(tx),
            "charging_schedule": {
                "charging_rate_unit": unit,
                "charging_schedule_period": [{"start_period": 0, "limit": limit}],
            },
        }
        call = v16.call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile)
        return str((await self.ask(call)).status)

    async def station_limit(self, connector: int, limit_w: float) -> str:
        """SetChargingProfile: a ChargePointMaxProfile on ``connector``; the status."""
        profile = {
            "charging_profile_id": 9,
            "stack_level": 0,
            "charging_profile_purpose": "ChargePointMaxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": {
                "charging_rate_unit": "W",
                "charging_schedule_period": [{"start_period": 0, "limit": limit_w}],
            },
        }
        call = v16.call.SetChargingProfile(connector_id=connector, cs_charging_profiles=profile)
        return str((await self.ask(call)).status)

    async def clear(self, profile_id: int) -> str:
        return str((await self.ask(v16.call.ClearChargingProfile(id=profile_id))).status)

    async def composite(self, unit: str) -> list[float]:
        """Limits of the composite schedule of connector 1 over an hour, in ``unit``."""
        call = v16.call.GetCompositeSchedule(connector_id=1, duration=3600, charging_rate_unit=unit)
        result = await self.ask(call)
        assert result.status == "Accepted"
        return [float(p["limit"]) for p in result.charging_schedule["charging_schedule_period"]]

    async def remote_start(self, connector: int, limit_a: float | None = None) -> str:
        profile = None
        if limit_a is not None:
            profile = {
                "charging_profile_id": 7,
                "stack_level": 0,
                "charging_profile_purpose": "TxProfile",
                "charging_profile_kind": "Relative",
                "charging_schedule": {
                    "charging_rate_unit": "A",
                    "charging_schedule_period": [{"start_period": 0, "limit": limit_a}],
                },
            }
        call = v16.call.RemoteStartTransaction(
            id_tag="REMOTE", connector_id=connector, charging_profile=profile
        )
        return str((await self.ask(call)).status)

    async def remote_stop(self, tx: str) -> str:
        call = v16.call.RemoteStopTransaction(transaction_id=int(tx))
        return str((await self.ask(call)).status)

    def stops(self) -> list[tuple[str, str]]:
        """(transaction id, reason) of every stopped transaction."""
        return [(str(p["transaction_id"]), p["reason"]) for p in self.csms.of("StopTransaction")]


class Central201(v201.ChargePoint):
    """Minimal OCPP 2.0.1 CSMS: accepts everything but the id token BADTAG."""

    def __init__(self, cp_id: str, ws: ServerConnection, csms: Csms) -> None:
        super().__init__(cp_id, ws, response_timeout=5)
        self.csms = csms

    def _seen(self, action: str, payload: dict[str, Any]) -> None:
        self.csms.calls.append((self.id, action, payload))

    @on("BootNotification")
    def on_boot(self, **kwargs: Any) -> Any:
        self._seen("BootNotification", kwargs)
        return v201.call_result.BootNotification(
            current_time=_now(), interval=self.csms.heartbeat_s, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat(self, **kwargs: Any) -> Any:
        self._seen("Heartbeat", kwargs)
        return v201.call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **kwargs: Any) -> Any:
        self._seen("StatusNotification", kwargs)
        return v201.call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **kwargs: Any) -> Any:
        self._seen("Authorize", {"id_token": id_token, **kwargs})
        status = "Invalid" if id_token["id_token"] == "BADTAG" else "Accepted"
        return v201.call_result.Authorize(id_token_info={"status": status})

    @on("TransactionEvent")
    def on_transaction_event(self, **kwargs: Any) -> Any:
        self._seen("TransactionEvent", kwargs)
        return v201.call_result.TransactionEvent()

    @on("MeterValues")
    def on_meter_values(self, **kwargs: Any) -> Any:
        self._seen("MeterValues", kwargs)
        return v201.call_result.MeterValues()

    async def ask(self, payload: Any) -> Any:
        return await self.call(payload, suppress=False)

    async def set_tx_limit(self, profile_id: int, limit: float, unit: str, tx: str | None) -> str:
        profile = {
            "id": profile_id,
            "stack_level": 1,
            "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Relative",
            "transaction_id": tx,
            "charging_schedule": [
                {
                    "id": 1,
                    "charging_rate_unit": unit,
                    "charging_schedule_period": [{"start_period": 0, "limit": limit}],
                }
            ],
        }
        call = v201.call.SetChargingProfile(evse_id=1, charging_profile=profile)
        return str((await self.ask(call)).status)

    async def station_limit(self, evse: int, limit_w: float) -> str:
        profile = {
            "id": 9,
            "stack_level": 0,
            "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": [
                {
                    "id": 1,
                    "charging_rate_unit": "W",
                    "charging_schedule_period": [{"start_period": 0, "limit": limit_w}],
                }
            ],
        }
        call = v201.call.SetChargingProfile(evse_id=evse, charging_profile=profile)
        return str((await self.ask(call)).status)

    async def clear(self, profile_id: int) -> str:
        call = v201.call.ClearChargingProfile(charging_profile_id=profile_id)
        return str((await self.ask(call)).status)

    async def composite(self, unit: str) -> list[float]:
        call = v201.call.GetCompositeSchedule(duration=3600, evse_id=1, charging_rate_unit=unit)
        result = await self.ask(call)
        assert result.status == "Accepted"
        return [float(p["limit"]) for p in result.schedule["charging_schedule_period"]]

    async def remote_start(self, evse: int, limit_a: float | None = None) -> str:
        profile = None
        if limit_a is not None:
            profile = {
                "id": 7,
                "stack_level": 0,
                "charging_profile_purpose": "TxProfile",
                "charging_profile_kind": "Relative",
                "charging_schedule": [
                    {
                        "id": 1,
                        "charging_rate_unit": "A",
                        "charging_schedule_period": [{"start_period": 0, "limit": limit_a}],
                    }
                ],
            }
        call = v201.call.RequestStartTransaction(
            id_token={"id_token": "REMOTE", "type": "Central"},
            remote_start_id=42,
            evse_id=evse,
            charging_profile=profile,
        )
        return str((await self.ask(call)).status)

    async def remote_stop(self, tx: str) -> str:
        call = v201.call.RequestStopTransaction(transaction_id=tx)
        return str((await self.ask(call)).status)

    def stops(self) -> list[tuple[str, str]]:
        return [
            (p["transaction_info"]["transaction_id"], p["transaction_info"]["stopped_reason"])
            for p in self.csms.of("TransactionEvent")
            if p["event_type"] == "Ended"
        ]


@asynccontextmanager
async def serving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Csms]:
    """The minimal CSMS on a free loopback port (wss:// with ``tls``), speaking 1.6 and 2.0.1
    by subprotocol."""
    state = Csms()

    async def serve(ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = ws.request.path.rsplit("/", 1)[-1]
        central = (Central16 if ws.subprotocol == "ocpp1.6" else Central201)(cp_id, ws, state)
        state.stations[cp_id], state.sockets[cp_id] = central, ws
        state.auth.append(ws.request.headers.get("Authorization"))
        with suppress(ConnectionClosed):
            await central.start()

    protocols = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
    async with websockets.serve(
        serve, "127.0.0.1", 0, subprotocols=protocols, compression=None, ssl=tls
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        state.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ocpp"
        yield state


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    """The minimal CSMS over plain websockets."""
    async with serving() as state:
        yield state


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 and its key (openssl)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (Debian package `openssl`)", pytrace=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request: pytest.FixtureRequest) -> str:
    """Each test runs for both OCPP versions."""
    return str(request.param)


@asynccontextmanager
async def running(charger: SimulatedCharger) -> AsyncIterator[SimulatedCharger]:
    """Run ``charger`` until the block ends; enter once it booted."""
    task = asyncio.create_task(charger.run(), name="test-charger")
    try:
        async with asyncio.timeout(5):
            await charger.connected.wait()
        yield charger
    finally:
        await cancel_and_wait(task)


def charger_for(csms: Csms, version: str, **kwargs: Any) -> SimulatedCharger:
    options: dict[str, Any] = {"meter_interval_s": METER_S, "reconnect_s": 0.05} | kwargs
    return SimulatedCharger(CP, csms.url, version=version, **options)


async def test_boot_reports_connectors_and_heartbeats(csms: Csms, version: str) -> None:
    """The charger boots with its identity and Basic auth, reports every connector Available,
    and heartbeats at the interval the CSMS gave."""
    csms.heartbeat_s = 1
    charger = charger_for(csms, version, connectors=2, password="s3cret", vendor="ACME")
    async with running(charger):
        await until(lambda: len(csms.of("Heartbeat")) >= 1, timeout_s=3)
    boot = csms.of("BootNotification")[0]
    vendor = (
        boot["charge_point_vendor"] if version == "1.6" else boot["charging_station"]["vendor_name"]
    )
    assert vendor == "ACME"
    assert csms.auth == ["Basic " + base64.b64encode(b"CP1:s3cret").decode()]
    assert csms.statuses(1)[:1] == csms.statuses(2)[:1] == ["Available"]
    assert charger.heartbeat_s == 1


async def test_session_meters_rising_energy_at_ev_or_charger_max(csms: Csms, version: str) -> None:
    """A plugged-in EV charges at min(EV max, charger max); meter values carry rising energy,
    per-phase power, current, voltage and SoC; unplugging stops the transaction; a refused
    id tag starts nothing."""
    async with running(charger_for(csms, version)) as charger:
        assert await charger.plug_in(id_tag="BADTAG") is None
        tx = await charger.plug_in(ev_max_kw=7.4, soc_percent=40)
        assert tx is not None
        assert charger.transaction_id() == tx
        assert charger.power_kw() == pytest.approx(7.4)
        await until(lambda: len(csms.readings()) >= 3)
        await charger.unplug()
        tx2 = await charger.plug_in()
        assert charger.power_kw() == pytest.approx(11.0)
        await until(lambda: csms.power_w() == 11000)
        await charger.unplug()
    readings = csms.readings()
    first = readings[0]
    assert first["Power.Active.Import"] == 7400
    assert first["Power.Active.Import.L2"] == pytest.approx(7400 / 3, abs=0.1)
    assert first["Current.Import.L1"] == pytest.approx(7400 / 3 / 230, abs=0.01)
    assert first["Voltage.L3-N"] == 230
    assert first["Power.Offered"] == 11000
    assert first["SoC"] >= 40
    energy = [r["Energy.Active.Import.Register"] for r in readings]
    assert energy == sorted(energy)
    assert energy[-1] > energy[0]
    assert [t for t, _ in csms.stations[CP].stops()] == [tx, tx2]
    assert {reason for _, reason in csms.stations[CP].stops()} == {"EVDisconnected"}
    if version == "1.6":
        assert csms.statuses()[-3:] == ["Preparing", "Charging", "Available"]
        stop = csms.of("StopTransaction")[0]
        end = stop["transaction_data"][0]["sampled_value"][0]
        assert end["measurand"] == "Energy.Active.Import.Register"
        assert end["context"] == "Transaction.End"
        assert float(end["value"]) > energy[0]
        assert stop["meter_stop"] == int(float(end["value"]))
    else:
        assert csms.statuses()[-2:] == ["Occupied", "Available"]
        events = [
            p for p in csms.of("TransactionEvent") if p["transaction_info"]["transaction_id"] == tx
        ]
        assert [e["seq_no"] for e in events] == list(range(len(events)))
        assert events[0]["event_type"] == "Started"
        assert events[-1]["event_type"] == "Ended"


async def test_charging_profile_limits_power(csms: Csms, version: str) -> None:
    """A TxProfile of 10 A caps power at 10 A x 3 x 230 V in the meter values and the composite
    schedule (W and A); misplaced profiles are rejected; clearing restores the charger max."""
    async with running(charger_for(csms, version)) as charger:
        central = csms.stations[CP]
        assert await central.set_tx_limit(1, 10, "A", None) == "Rejected"  # no transaction yet
        tx = await charger.plug_in()
        assert await central.set_tx_limit(1, 10, "A", tx) == "Accepted"
        assert charger.power_kw() == pytest.approx(6.9)
        await until(lambda: csms.power_w() == 6900)
        assert csms.readings()[-1]["Power.Offered"] == 6900
        assert await central.composite("W") == [6900]
        assert await central.composite("A") == [10]
        assert await central.station_limit(1, 5000) == "Rejected"  # station max on connector 1
        assert await central.station_limit(0, 5000) == "Accepted"
        assert charger.power_kw() == pytest.approx(5.0)
        assert await central.clear(9) == "Accepted"
        assert await central.clear(1) == "Accepted"
        assert await central.clear(1) == "Unknown"
        assert charger.profiles == []
        await until(lambda: csms.power_w() == 11000)


async def test_remote_start_and_stop(csms: Csms, version: str) -> None:
    """A remote start opens a transaction with its TxProfile, a busy connector refuses a second
    one, an unknown transaction cannot be stopped, and a remote stop ends the transaction."""
    async with running(charger_for(csms, version)) as charger:
        central = csms.stations[CP]
        assert await central.remote_start(1, limit_a=8) == "Accepted"
        await until(lambda: charger.transaction_id() is not None)
        tx = charger.transaction_id()
        assert tx is not None
        assert await central.remote_start(1) == "Rejected"
        await until(lambda: bool(csms.readings()))
        assert csms.power_w() == 8 * 3 * 230
        assert await central.remote_stop("999") == "Rejected"
        assert await central.remote_stop(tx) == "Accepted"
        await until(lambda: bool(central.stops()))
        assert central.stops() == [(tx, "Remote")]
        assert charger.transaction_id() is None
        assert charger.profiles == []
    if version == "2.0.1":
        started = csms.of("TransactionEvent")[0]
        assert started["trigger_reason"] == "RemoteStart"
        assert started["transaction_info"]["remote_start_id"] == 42


async def test_reconnects_and_keeps_the_transaction(csms: Csms, version: str) -> None:
    """When the CSMS drops the connection the charger boots again after reconnect_s and keeps
    metering the transaction that was running."""
    async with running(charger_for(csms, version)) as charger:
        tx = await charger.plug_in()
        await csms.sockets[CP].close()
        await until(lambda: len(csms.of("BootNotification")) == 2 and charger.connected.is_set())
        before = len(csms.readings())
        await until(lambda: len(csms.readings()) > before)
        assert charger.transaction_id() == tx
        await charger.unplug()
    assert [t for t, _ in csms.stations[CP].stops()] == [tx]


async def test_v16_operations(csms: Csms) -> None:
    """OCPP 1.6 operations: ChangeAvailability (Scheduled during a session), TriggerMessage,
    UnlockConnector, Get/ChangeConfiguration, DataTransfer, and a hard Reset that reconnects."""
    async with running(charger_for(csms, "1.6")) as charger:
        central = csms.stations[CP]
        ask = central.ask
        result = await ask(v16.call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert result.status == "Accepted"
        await until(lambda: csms.statuses()[-1] == "Unavailable")
        assert await charger.plug_in() is None
        await ask(v16.call.ChangeAvailability(connector_id=0, type="Operative"))
        await until(lambda: csms.statuses()[-1] == "Available")
        tx = await charger.plug_in()
        result = await ask(v16.call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert result.status == "Scheduled"
        assert charger.availability[1] == "Operative"
        result = await ask(v16.call.TriggerMessage(requested_message="MeterValues", connector_id=1))
        assert result.status == "Accepted"
        await until(
            lambda: any(
                p["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"
                for p in csms.of("MeterValues")
            )
        )
        result = await ask(v16.call.UnlockConnector(connector_id=1))
        assert result.status == "Unlocked"
        assert charger.unlocks == [1]
        await until(lambda: central.stops() == [(tx, "UnlockCommand")])
        await until(lambda: csms.statuses()[-1] == "Unavailable")  # the scheduled change
        config = await ask(v16.call.GetConfiguration(key=["HeartbeatInterval", "Nope"]))
        assert config.configuration_key == [
            {"key": "HeartbeatInterval", "readonly": False, "value": "60"}
        ]
        assert config.unknown_key == ["Nope"]
        change = v16.call.ChangeConfiguration(key="MeterValueSampleInterval", value="0.5")
        assert (await ask(change)).status == "Accepted"
        assert charger.meter_interval_s == 0.5
        change = v16.call.ChangeConfiguration(key="NumberOfConnectors", value="3")
        assert (await ask(change)).status == "Rejected"
        assert (await ask(v16.call.DataTransfer(vendor_id="X"))).status == "Accepted"
        assert (await ask(v16.call.Reset(type="Hard"))).status == "Accepted"
        await until(lambda: len(csms.of("BootNotification")) == 2 and charger.connected.is_set())
        assert charger.resets == ["Hard"]


async def test_v201_operations(csms: Csms) -> None:
    """OCPP 2.0.1 operations: ChangeAvailability, TriggerMessage, UnlockConnector (refused in a
    transaction), Get/SetVariables, DataTransfer, and an immediate Reset that stops the
    transaction and reconnects."""
    async with running(charger_for(csms, "2.0.1")) as charger:
        central = csms.stations[CP]
        ask = central.ask
        result = await ask(
            v201.call.ChangeAvailability(operational_status="Inoperative", evse={"id": 1})
        )
        assert result.status == "Accepted"
        assert charger.availability == {1: "Inoperative"}
        await until(lambda: csms.statuses()[-1] == "Unavailable")
        await ask(v201.call.ChangeAvailability(operational_status="Operative"))
        tx = await charger.plug_in()
        result = await ask(v201.call.TriggerMessage(requested_message="TransactionEvent"))
        assert result.status == "Accepted"
        await until(
            lambda: any(p["trigger_reason"] == "Trigger" for p in csms.of("TransactionEvent"))
        )
        result = await ask(v201.call.UnlockConnector(evse_id=1, connector_id=1))
        assert result.status == "OngoingAuthorizedTransaction"
        assert charger.unlocks == [1]
        component = {"name": "OCPPCommCtrlr"}
        got = await ask(
            v201.call.GetVariables(
                get_variable_data=[
                    {"component": component, "variable": {"name": "HeartbeatInterval"}},
                    {"component": {"name": "Nope"}, "variable": {"name": "X"}},
                ]
            )
        )
        assert [r["attribute_status"] for r in got.get_variable_result] == [
            "Accepted",
            "UnknownComponent",
        ]
        assert got.get_variable_result[0]["attribute_value"] == "60"
        data = [
            {
                "component": component,
                "variable": {"name": "HeartbeatInterval"},
                "attribute_value": "30",
            }
        ]
        result = await ask(v201.call.SetVariables(set_variable_data=data))
        assert result.set_variable_result[0]["attribute_status"] == "Accepted"
        assert charger.heartbeat_s == 30
        assert (await ask(v201.call.DataTransfer(vendor_id="X"))).status == "Accepted"
        assert (await ask(v201.call.Reset(type="Immediate"))).status == "Accepted"
        await until(lambda: len(csms.of("BootNotification")) == 2 and charger.connected.is_set())
        assert central.stops() == [(tx, "ImmediateReset")]
        assert charger.resets == ["Immediate"]


async def test_auto_sessions_come_and_go(csms: Csms) -> None:
    """In demo mode EVs arrive and leave by themselves."""
    charger = charger_for(csms, "1.6", meter_interval_s=0.01, auto_sessions=True, seed=3)
    async with running(charger):
        await until(lambda: bool(csms.of("StopTransaction")), timeout_s=5)
    assert csms.of("StartTransaction")


async def test_tls_and_basic_auth(certificate: tuple[Path, Path]) -> None:
    """Over wss:// the charger checks the CSMS's certificate with the SSL context it was given
    and sends its Basic auth header."""
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    async with serving(server_tls) as csms:
        client_tls = ssl.create_default_context(cafile=str(cert))
        charger = charger_for(csms, "2.0.1", ssl=client_tls, password="pw")
        async with running(charger):
            assert await charger.plug_in() is not None
    assert csms.url.startswith("wss://")
    assert csms.auth == ["Basic " + base64.b64encode(b"CP1:pw").decode()]


async def test_run_outlives_an_unreachable_csms() -> None:
    """With nothing listening run() keeps retrying (it only ends by cancellation) and plug_in
    refuses with TransportError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    charger = SimulatedCharger(CP, f"ws://127.0.0.1:{port}/ocpp", reconnect_s=0.01)
    task = asyncio.create_task(charger.run())
    await asyncio.sleep(0.1)
    assert not task.done()
    with pytest.raises(TransportError):
        await charger.plug_in()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
