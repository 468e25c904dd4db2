"""The ``ocpp`` library's charge-point handlers for OCPP 1.6 and 2.0.1, one class per version.

Each message is screened first (``derim.adapters.ocpp.screening``), so handlers skip the
library's own schema check; what they learn goes to the ``CentralSystem``. Work that touches
storage is bounded by ``ocpp_message_timeout_s``: a store that does not accept readings in
time gets the charger an InternalError (and the charger retries), never a silent success.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from ocpp.exceptions import InternalError, OCPPError
from ocpp.messages import CallError, MessageType
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16Base
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as ChargePoint201Base
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

from derim.adapters.ocpp.central import LIBRARY_LOG, WIRE_LOG, CentralSystem, ChargerLink
from derim.adapters.ocpp.meter import MeterReadings, readings_v16, readings_v201
from derim.adapters.ocpp.screening import (
    format_error,
    parse_frame,
    screen_call,
    unique_id_of,
)
from derim.errors import DerimError, ProtocolError
from derim.models.common import ConnectorStatus
from derim.storage.rejects import Reject

T = TypeVar("T")
handles = partial(on, skip_schema_validation=True)
"""Register a handler; the payload was already screened."""

STATUS_16 = {
    "Available": ConnectorStatus.AVAILABLE,
    "Preparing": ConnectorStatus.PREPARING,
    "Charging": ConnectorStatus.CHARGING,
    "SuspendedEVSE": ConnectorStatus.SUSPENDED_EVSE,
    "SuspendedEV": ConnectorStatus.SUSPENDED_EV,
    "Finishing": ConnectorStatus.FINISHING,
    "Reserved": ConnectorStatus.RESERVED,
    "Unavailable": ConnectorStatus.UNAVAILABLE,
    "Faulted": ConnectorStatus.FAULTED,
}
STATUS_201 = {
    "Available": ConnectorStatus.AVAILABLE,
    "Occupied": ConnectorStatus.OCCUPIED,
    "Reserved": ConnectorStatus.RESERVED,
    "Unavailable": ConnectorStatus.UNAVAILABLE,
    "Faulted": ConnectorStatus.FAULTED,
}
CHARGING_STATE_201 = {
    "Charging": ConnectorStatus.CHARGING,
    "EVConnected": ConnectorStatus.OCCUPIED,
    "SuspendedEV": ConnectorStatus.SUSPENDED_EV,
    "SuspendedEVSE": ConnectorStatus.SUSPENDED_EVSE,
    "Idle": ConnectorStatus.AVAILABLE,
}


def charge_point(central: CentralSystem, link: ChargerLink) -> Any:
    """The library charge point serving ``link`` in its OCPP version."""
    cls = ChargePoint16 if link.version == "1.6" else ChargePoint201
    return cls(central, link)


def now_text() -> str:
    """The current UTC time as OCPP writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Screened:
    """Screens every frame before the library routes it; counts and dead-letters bad ones."""

    version: str

    def __init__(self, central: CentralSystem, link: ChargerLink) -> None:
        super().__init__(  # type: ignore[call-arg]  # the library's ChargePoint.__init__
            link.charge_point_id,
            link.websocket,
            response_timeout=central.settings.ocpp_call_timeout_s,
            logger=LIBRARY_LOG,
        )
        self.central = central
        self.link = link

    async def route_message(self, raw: str | bytes) -> None:
        """Answer a malformed frame or a schema violation with a CallError; route the rest."""
        self.central.seen(self.link)
        try:
            frame = parse_frame(raw, self.version)
            if frame[0] == MessageType.Call:
                screened = screen_call(
                    frame[2], frame[3], self.version, strict=self.central.settings.ocpp_strict
                )
                if screened.dropped:
                    self.central.counters.dropped_fields += len(screened.dropped)
                    WIRE_LOG.warning(
                        "charger %s %s: ignored unknown fields %s",
                        self.link.charge_point_id,
                        frame[2],
                        ", ".join(screened.dropped),
                    )
                    raw = json.dumps(frame)
        except OCPPError as exc:
            await self._refuse(raw, exc)
            return
        await super().route_message(raw)  # type: ignore[misc]

    async def _refuse(self, raw: str | bytes, error: OCPPError) -> None:
        """Send a CallError for a frame that cannot be handled and keep the frame."""
        central = self.central
        central.counters.malformed += 1
        central.counters.call_errors += 1
        reason = f"{error.code}: {error.description}"
        WIRE_LOG.warning("charger %s sent a bad frame: %s", self.link.charge_point_id, reason)
        payload = raw.encode() if isinstance(raw, str) else raw
        await central.rejects.add([Reject("ocpp", self.link.charge_point_id, reason, payload)])
        answer = CallError(unique_id_of(raw), error.code, error.description, error.details or {})
        await self._send(answer.to_json())  # type: ignore[attr-defined]

    async def _within_time(self, work: Awaitable[T]) -> T:
        """``work`` bounded by the message timeout; an InternalError if it fails or overruns."""
        try:
            async with asyncio.timeout(self.central.settings.ocpp_message_timeout_s):
                return await work
        except TimeoutError as exc:
            self.central.counters.call_errors += 1
            raise InternalError(description="DERIM could not store this in time; resend") from exc
        except DerimError as exc:
            self.central.counters.call_errors += 1
            raise InternalError(description=f"DERIM could not handle this: {exc}") from exc

    def _when(self, text: str | None) -> datetime:
        """An OCPP timestamp (now when absent); a FormatViolation when unreadable."""
        if text is None:
            return datetime.now(UTC)
        try:
            moment = datetime.fromisoformat(text)
        except (TypeError, ValueError) as exc:
            raise format_error(self.version, f"timestamp {text!r} is not ISO 8601") from exc
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def _readings(self, mapper: Any, *args: Any) -> MeterReadings:
        try:
            readings: MeterReadings = mapper(self.link.device_id, *args)
        except ProtocolError as exc:
            raise format_error(self.version, str(exc)) from exc
        return readings

    def _status(self, table: dict[str, ConnectorStatus], name: str) -> ConnectorStatus:
        try:
            return table[name]
        except KeyError:
            raise format_error(self.version, f"unknown connector status {name!r}") from None


class ChargePoint16(_Screened, ChargePoint16Base):
    """An OCPP 1.6-J charger, as seen from the central system."""

    version = "1.6"

    @handles(Action16.boot_notification)
    async def on_boot(
        self,
        charge_point_vendor: str,
        charge_point_model: str,
        charge_point_serial_number: str | None = None,
        firmware_version: str | None = None,
        **_: Any,
    ) -> result16.BootNotification:
        await self._within_time(
            self.central.booted(
                self.link,
                vendor=charge_point_vendor,
                model=charge_point_model,
                serial_number=charge_point_serial_number,
                firmware_version=firmware_version,
            )
        )
        return result16.BootNotification(
            current_time=now_text(),
            interval=self.central.settings.ocpp_heartbeat_interval_s,
            status="Accepted",
        )

    @handles(Action16.heartbeat)
    def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=now_text())

    @handles(Action16.status_notification)
    async def on_status(
        self,
        connector_id: int,
        error_code: str,
        status: str,
        timestamp: str | None = None,
        **_: Any,
    ) -> result16.StatusNotification:
        state = self._status(STATUS_16, status)
        error = None if error_code == "NoError" else error_code
        await self._within_time(
            self.central.connector_status(
                self.link, connector_id, state, self._when(timestamp), error
            )
        )
        return result16.StatusNotification()

    @handles(Action16.meter_values)
    async def on_meter_values(
        self,
        connector_id: int,
        meter_value: list[dict[str, Any]],
        transaction_id: int | None = None,
        **_: Any,
    ) -> result16.MeterValues:
        tx = None if transaction_id is None else str(transaction_id)
        readings = self._readings(readings_v16, connector_id, meter_value, tx)
        await self._within_time(self.central.readings(self.link, readings, meter_value))
        return result16.MeterValues()

    @handles(Action16.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> result16.Authorize:
        return result16.Authorize(id_tag_info=self._tag(id_tag))

    @handles(Action16.start_transaction)
    async def on_start(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> result16.StartTransaction:
        session = await self._within_time(
            self.central.session_started(
                self.link,
                connector_id,
                self._when(timestamp),
                id_tag=id_tag,
                meter_kwh=meter_start / 1000,
            )
        )
        return result16.StartTransaction(
            transaction_id=int(session.transaction_id), id_tag_info=self._tag(id_tag)
        )

    @handles(Action16.stop_transaction)
    async def on_stop(
        self,
        meter_stop: int,
        timestamp: str,
        transaction_id: int,
        reason: str | None = None,
        id_tag: str | None = None,
        transaction_data: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> result16.StopTransaction:
        tx = str(transaction_id)
        if transaction_data:
            session = self.central.sessions.find_active(self.link.device_id, tx)
            connector = session.connector_id if session is not None else 0
            readings = self._readings(readings_v16, connector, transaction_data, tx)
            await self._within_time(self.central.readings(self.link, readings, transaction_data))
        await self._within_time(
            self.central.session_stopped(
                self.link, tx, self._when(timestamp), meter_kwh=meter_stop / 1000, reason=reason
            )
        )
        return result16.StopTransaction(id_tag_info=None if id_tag is None else self._tag(id_tag))

    @after(Action16.start_transaction)
    def after_start(self, **_: Any) -> None:
        self.central.sessions_may_have_changed(self.link)

    @after(Action16.stop_transaction)
    def after_stop(self, **_: Any) -> None:
        self.central.sessions_may_have_changed(self.link)

    @handles(Action16.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> result16.DataTransfer:
        WIRE_LOG.info(
            "charger %s: DataTransfer from vendor %s", self.link.charge_point_id, vendor_id
        )
        return result16.DataTransfer(status="UnknownVendorId")

    @handles(Action16.firmware_status_notification)
    def on_firmware_status(self, status: str, **_: Any) -> result16.FirmwareStatusNotification:
        self.central.firmware_status(self.link, status)
        return result16.FirmwareStatusNotification()

    @handles(Action16.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> result16.DiagnosticsStatusNotification:
        return result16.DiagnosticsStatusNotification()

    @handles(Action16.security_event_notification)
    def on_security_event(
        self, type: str, timestamp: str, tech_info: str | None = None, **_: Any
    ) -> result16.SecurityEventNotification:
        self.central.security_event(self.link, type, self._when(timestamp), tech_info)
        return result16.SecurityEventNotification()

    def _tag(self, id_tag: str) -> dict[str, str]:
        return {"status": "Accepted" if self.central.authorized(id_tag) else "Invalid"}


class ChargePoint201(_Screened, ChargePoint201Base):
    """An OCPP 2.0.1 charging station, as seen from the central system."""

    version = "2.0.1"

    @handles(Action201.boot_notification)
    async def on_boot(
        self, charging_station: dict[str, Any], **_: Any
    ) -> result201.BootNotification:
        await self._within_time(
            self.central.booted(
                self.link,
                vendor=charging_station["vendor_name"],
                model=charging_station["model"],
                serial_number=charging_station.get("serial_number"),
                firmware_version=charging_station.get("firmware_version"),
            )
        )
        return result201.BootNotification(
            current_time=now_text(),
            interval=self.central.settings.ocpp_heartbeat_interval_s,
            status="Accepted",
        )

    @handles(Action201.heartbeat)
    def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=now_text())

    @handles(Action201.status_notification)
    async def on_status(
        self, timestamp: str, connector_status: str, evse_id: int, **_: Any
    ) -> result201.StatusNotification:
        state = self._status(STATUS_201, connector_status)
        await self._within_time(
            self.central.connector_status(self.link, evse_id, state, self._when(timestamp))
        )
        return result201.StatusNotification()

    @handles(Action201.meter_values)
    async def on_meter_values(
        self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any
    ) -> result201.MeterValues:
        readings = self._readings(readings_v201, evse_id, meter_value, None)
        await self._within_time(self.central.readings(self.link, readings, meter_value))
        return result201.MeterValues()

    @handles(Action201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info=self._token(id_token))

    @handles(Action201.transaction_event)
    async def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        transaction_info: dict[str, Any],
        id_token: dict[str, Any] | None = None,
        evse: dict[str, Any] | None = None,
        meter_value: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> result201.TransactionEvent:
        await self._within_time(
            self._transaction(
                event_type, self._when(timestamp), transaction_info, id_token, evse, meter_value
            )
        )
        return result201.TransactionEvent(
            id_token_info=None if id_token is None else self._token(id_token)
        )

    async def _transaction(
        self,
        event_type: str,
        at: datetime,
        info: dict[str, Any],
        id_token: dict[str, Any] | None,
        evse: dict[str, Any] | None,
        meter_value: list[dict[str, Any]] | None,
    ) -> None:
        """Start, update or end the session; store its readings and charging state."""
        central, tx = self.central, str(info["transaction_id"])
        session = central.sessions.find_active(self.link.device_id, tx)
        evse_id = evse["id"] if evse else session.connector_id if session else 0
        readings = self._readings(readings_v201, evse_id, meter_value or [], tx)
        register = [
            r.energy_import_kwh for r in readings.records if r.energy_import_kwh is not None
        ]
        if session is None or event_type == "Started":
            # Idempotent: a Started sent again, or an Updated/Ended of a transaction that began
            # while DERIM was unreachable, still yields one session.
            await central.session_started(
                self.link,
                evse_id,
                at,
                id_tag=id_token["id_token"] if id_token else None,
                meter_kwh=register[0] if register else None,
                transaction_id=tx,
            )
        await central.readings(self.link, readings, meter_value or [])
        state = CHARGING_STATE_201.get(info.get("charging_state", ""))
        if state is not None:
            await central.connector_status(self.link, evse_id, state, at)
        if event_type == "Ended":
            await central.session_stopped(
                self.link,
                tx,
                at,
                meter_kwh=register[-1] if register else None,
                reason=info.get("stopped_reason"),
            )

    @after(Action201.transaction_event)
    def after_transaction(self, **_: Any) -> None:
        self.central.sessions_may_have_changed(self.link)

    @handles(Action201.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> result201.DataTransfer:
        WIRE_LOG.info(
            "charger %s: DataTransfer from vendor %s", self.link.charge_point_id, vendor_id
        )
        return result201.DataTransfer(status="UnknownVendorId")

    @handles(Action201.firmware_status_notification)
    def on_firmware_status(self, status: str, **_: Any) -> result201.FirmwareStatusNotification:
        self.central.firmware_status(self.link, status)
        return result201.FirmwareStatusNotification()

    @handles(Action201.security_event_notification)
    def on_security_event(
        self, type: str, timestamp: str, tech_info: str | None = None, **_: Any
    ) -> result201.SecurityEventNotification:
        self.central.security_event(self.link, type, self._when(timestamp), tech_info)
        return result201.SecurityEventNotification()

    @handles(Action201.notify_event)
    def on_notify_event(self, **_: Any) -> result201.NotifyEvent:
        return result201.NotifyEvent()

    @handles(Action201.notify_report)
    def on_notify_report(self, **_: Any) -> result201.NotifyReport:
        return result201.NotifyReport()

    def _token(self, id_token: dict[str, Any]) -> dict[str, str]:
        accepted = self.central.authorized(str(id_token.get("id_token", "")))
        return {"status": "Accepted" if accepted else "Invalid"}
