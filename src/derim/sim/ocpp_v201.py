"""OCPP 2.0.1 as a simulated charger speaks it (see :mod:`derim.sim.ocpp_dialect`); each
"connector" of the charger is an EVSE with one connector."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp import v201
from websockets.typing import Subprotocol

from derim.sim import ocpp_profiles as prof
from derim.sim.ocpp_dialect import Dialect
from derim.sim.ocpp_state import Connector, FollowUp, Session, now_iso

VARIABLES: dict[tuple[str, str], str] = {
    ("OCPPCommCtrlr", "HeartbeatInterval"): "HeartbeatInterval",
    ("SampledDataCtrlr", "TxUpdatedInterval"): "MeterValueSampleInterval",
}
"""OCPP 2.0.1 (component, variable) that GetVariables / SetVariables serve: the config key."""
TRIGGERS_201 = {
    "DeAuthorized": "Deauthorized",
    "EVDisconnected": "EVDeparted",
    "HardReset": "ResetCommand",
    "SoftReset": "ResetCommand",
    "Remote": "RemoteStop",
    "UnlockCommand": "UnlockCommand",
}
"""Stop reasons (1.6 names) to the trigger reason of a 2.0.1 TransactionEvent Ended."""
REASONS_201 = {"HardReset": "ImmediateReset", "SoftReset": "Reboot", "UnlockCommand": "Other"}
"""Stop reasons (1.6 names) that 2.0.1 names differently."""


class V201(Dialect):
    """OCPP 2.0.1: the charger names transactions and reports them in TransactionEvents;
    sampled values are numbers with a unit of measure."""

    subprotocol = Subprotocol("ocpp2.0.1")
    version = v201

    def routes(self) -> dict[str, Callable[..., dict[str, Any]]]:
        return {
            "RequestStartTransaction": self._request_start_transaction,
            "RequestStopTransaction": lambda transaction_id, **_: self._remote_stop(transaction_id),
            "SetChargingProfile": lambda evse_id, charging_profile, **_: self._set_profile(
                evse_id, charging_profile
            ),
            "ClearChargingProfile": self._clear_charging_profile,
            "GetCompositeSchedule": self._get_composite_schedule,
            "ChangeAvailability": lambda operational_status, evse=None, **_: (
                self._change_availability((evse or {}).get("id", 0), operational_status)
            ),
            "Reset": lambda type, **_: self._reset(type, hard=type == "Immediate"),
            "UnlockConnector": self._unlock_connector,
            "TriggerMessage": lambda requested_message, evse=None, **_: self._trigger(
                requested_message, None if evse is None else evse["id"]
            ),
            "GetVariables": self._get_variables,
            "SetVariables": self._set_variables,
            "DataTransfer": self._data_transfer,
        }

    def parse_profile(self, connector_id: int, raw: dict[str, Any]) -> prof.Profile:
        return prof.parse_v201(connector_id, raw, received=datetime.now(UTC))

    def _boot_notification(self, *, triggered: bool) -> Any:
        c = self.c
        station = {"model": c.model, "vendor_name": c.vendor, "firmware_version": c.firmware}
        reason = "Triggered" if triggered else "PowerUp"
        return v201.call.BootNotification(charging_station=station, reason=reason)

    def status_of(self, conn: Connector) -> str:
        return "Occupied" if conn.session is not None else self._idle_status(conn)

    async def send_status(self, conn: Connector, status: str) -> None:
        await self.c.call(
            v201.call.StatusNotification(
                timestamp=now_iso(), connector_status=status, evse_id=conn.id, connector_id=1
            )
        )

    async def authorize(self, id_tag: str) -> bool:
        result = await self.c.call(v201.call.Authorize(id_token=_token(id_tag)))
        return bool(result.id_token_info.get("status") == "Accepted")

    async def start(self, conn: Connector, session: Session, trigger: str) -> bool:
        session.tx_id, session.seq_no = str(uuid.uuid4()), 0
        info = {"remote_start_id": session.remote_start_id}
        result = await self._event(conn, session, session.tx_id, "Started", trigger, info)
        return bool((result.id_token_info or {}).get("status", "Accepted") == "Accepted")

    async def stop(self, conn: Connector, session: Session, tx: str, reason: str) -> None:
        info = {"stopped_reason": REASONS_201.get(reason, reason)}
        await self._event(conn, session, tx, "Ended", TRIGGERS_201.get(reason, "Trigger"), info)

    async def meter(self, conn: Connector, context: str, *, plain: bool = False) -> None:
        session = conn.session
        if plain or session is None or session.tx_id is None:
            meter_value = [self._meter_value(conn, context)]
            await self.c.call(v201.call.MeterValues(evse_id=conn.id, meter_value=meter_value))
        else:
            trigger = "Trigger" if context == "Trigger" else "MeterValuePeriodic"
            await self._event(conn, session, session.tx_id, "Updated", trigger, {})

    async def _event(
        self,
        conn: Connector,
        session: Session,
        tx: str,
        event_type: str,
        trigger: str,
        info: dict[str, Any],
    ) -> Any:
        """TransactionEvent ``event_type`` of ``tx``, with the meter values of ``conn``."""
        if session.tx_id is not None:
            state = self.c.charging_state(conn)
        else:
            state = "EVConnected" if conn.session is not None else "Idle"
        contexts = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}
        periodic = "Trigger" if trigger == "Trigger" else "Sample.Periodic"
        seq_no, session.seq_no = session.seq_no, session.seq_no + 1
        return await self.c.call(
            v201.call.TransactionEvent(
                event_type=event_type,
                timestamp=now_iso(),
                trigger_reason=trigger,
                seq_no=seq_no,
                transaction_info={"transaction_id": tx, "charging_state": state} | info,
                meter_value=[self._meter_value(conn, contexts.get(event_type, periodic))],
                evse={"id": conn.id, "connector_id": 1},
                id_token=_token(session.id_tag) if event_type == "Started" else None,
            )
        )

    def _reading(self, value: float, unit: str) -> dict[str, Any]:
        return {"value": value, "unit_of_measure": {"unit": unit}}

    def _triggers(self, targets: list[Connector]) -> dict[str, FollowUp]:
        event = functools.partial(self._meter_all, targets)
        return super()._triggers(targets) | {"TransactionEvent": event}

    def _request_start_transaction(
        self,
        id_token: dict[str, Any],
        remote_start_id: int,
        evse_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        tag = str(id_token["id_token"])
        return self._remote_start(evse_id, tag, charging_profile, remote_start_id)

    def _clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        criteria = charging_profile_criteria or {}
        return self._clear_profiles(
            charging_profile_id,
            criteria.get("evse_id"),
            criteria.get("charging_profile_purpose"),
            criteria.get("stack_level"),
        )

    def _get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> dict[str, Any]:
        composite = self._composite(evse_id, duration, charging_rate_unit)
        if composite is None:
            return {"status": "Rejected"}
        start, schedule = composite
        schedule |= {"evse_id": evse_id, "schedule_start": start}
        return {"status": "Accepted", "schedule": schedule}

    def _unlock_connector(self, evse_id: int, connector_id: int, **_: Any) -> dict[str, Any]:
        conn = self.c.connectors.get(evse_id)
        if conn is None or connector_id != 1:
            return {"status": "UnknownConnector"}
        self.c.unlocks.append(evse_id)
        if conn.running:
            return {"status": "OngoingAuthorizedTransaction"}
        return {"status": "Unlocked"}

    def _get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        known = self.c.configuration()
        results = []
        for item in get_variable_data:
            key = _variable(item)
            status = "Accepted" if key is not None else _unknown(item)
            value = known[key][0] if key is not None else None
            results.append(_attribute(item, status) | {"attribute_value": value})
        return {"get_variable_result": results}

    def _set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        results = []
        for item in set_variable_data:
            key = _variable(item)
            if key is None:
                status = _unknown(item)
            else:
                status = self.c._change_configuration(key, str(item["attribute_value"]))
            results.append(_attribute(item, status))
        return {"set_variable_result": results}


def _token(id_tag: str) -> dict[str, str]:
    """A 2.0.1 IdToken of an RFID card."""
    return {"id_token": id_tag, "type": "ISO14443"}


def _variable(item: dict[str, Any]) -> str | None:
    """The config key a GetVariables / SetVariables item names, if served."""
    return VARIABLES.get((item["component"]["name"], item["variable"]["name"]))


def _unknown(item: dict[str, Any]) -> str:
    """UnknownComponent or UnknownVariable for an item not served."""
    components = {component for component, _ in VARIABLES}
    return "UnknownVariable" if item["component"]["name"] in components else "UnknownComponent"


def _attribute(item: dict[str, Any], status: str) -> dict[str, Any]:
    """A GetVariables / SetVariables result item."""
    return {"attribute_status": status, "component": item["component"]} | {
        "variable": item["variable"]
    }
