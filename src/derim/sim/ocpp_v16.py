"""OCPP 1.6-J as a simulated charger speaks it (see :mod:`derim.sim.ocpp_dialect`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp import v16
from websockets.typing import Subprotocol

from derim.sim import ocpp_profiles as prof
from derim.sim.ocpp_dialect import Dialect
from derim.sim.ocpp_state import Connector, Session, now_iso


class V16(Dialect):
    """OCPP 1.6-J: the CSMS numbers transactions; sampled values are strings."""

    subprotocol = Subprotocol("ocpp1.6")
    version = v16

    def routes(self) -> dict[str, Callable[..., dict[str, Any]]]:
        c = self.c
        return {
            "RemoteStartTransaction": self._remote_start_transaction,
            "RemoteStopTransaction": lambda transaction_id, **_: self._remote_stop(
                str(transaction_id)
            ),
            "SetChargingProfile": lambda connector_id, cs_charging_profiles, **_: self._set_profile(
                connector_id, cs_charging_profiles
            ),
            "ClearChargingProfile": self._clear_charging_profile,
            "GetCompositeSchedule": self._get_composite_schedule,
            "ChangeAvailability": lambda connector_id, type, **_: self._change_availability(
                connector_id, type
            ),
            "Reset": lambda type, **_: self._reset(type, hard=type == "Hard"),
            "UnlockConnector": self._unlock_connector,
            "TriggerMessage": lambda requested_message, connector_id=None, **_: self._trigger(
                requested_message, connector_id
            ),
            "GetConfiguration": self._get_configuration,
            "ChangeConfiguration": lambda key, value, **_: {
                "status": c._change_configuration(key, value)
            },
            "DataTransfer": self._data_transfer,
        }

    def parse_profile(self, connector_id: int, raw: dict[str, Any]) -> prof.Profile:
        return prof.parse_v16(connector_id, raw, received=datetime.now(UTC))

    def _boot_notification(self, *, triggered: bool) -> Any:
        c = self.c
        return v16.call.BootNotification(
            charge_point_model=c.model, charge_point_vendor=c.vendor, firmware_version=c.firmware
        )

    def status_of(self, conn: Connector) -> str:
        session = conn.session
        if session is None:
            return self._idle_status(conn)
        if session.tx_id is None:
            return "Finishing" if session.finished else "Preparing"
        return self.c.charging_state(conn)

    async def send_status(self, conn: Connector, status: str) -> None:
        await self.c.call(
            v16.call.StatusNotification(
                connector_id=conn.id, error_code="NoError", status=status, timestamp=now_iso()
            )
        )

    async def authorize(self, id_tag: str) -> bool:
        result = await self.c.call(v16.call.Authorize(id_tag=id_tag))
        return bool(result.id_tag_info.get("status") == "Accepted")

    async def start(self, conn: Connector, session: Session, trigger: str) -> bool:
        result = await self.c.call(
            v16.call.StartTransaction(
                connector_id=conn.id,
                id_tag=session.id_tag,
                meter_start=int(conn.energy_wh),
                timestamp=now_iso(),
            )
        )
        session.tx_id = str(result.transaction_id)
        return bool(result.id_tag_info.get("status") == "Accepted")

    async def stop(self, conn: Connector, session: Session, tx: str, reason: str) -> None:
        await self.c.call(
            v16.call.StopTransaction(
                meter_stop=int(conn.energy_wh),
                timestamp=now_iso(),
                transaction_id=int(tx),
                reason=reason,
                id_tag=session.id_tag,
                transaction_data=[self._meter_value(conn, "Transaction.End")],
            )
        )

    async def meter(self, conn: Connector, context: str, *, plain: bool = False) -> None:
        tx = conn.session.tx_id if conn.session is not None else None
        await self.c.call(
            v16.call.MeterValues(
                connector_id=conn.id,
                transaction_id=None if tx is None else int(tx),
                meter_value=[self._meter_value(conn, context)],
            )
        )

    def _reading(self, value: float, unit: str) -> dict[str, Any]:
        return {"value": str(value), "unit": unit}

    def _remote_start_transaction(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        return self._remote_start(connector_id, id_tag, charging_profile, None)

    def _clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        return self._clear_profiles(id, connector_id, charging_profile_purpose, stack_level)

    def _get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> dict[str, Any]:
        composite = self._composite(connector_id, duration, charging_rate_unit)
        if composite is None:
            return {"status": "Rejected"}
        start, schedule = composite
        return {
            "status": "Accepted",
            "connector_id": connector_id,
            "schedule_start": start,
            "charging_schedule": schedule | {"start_schedule": start},
        }

    def _unlock_connector(self, connector_id: int, **_: Any) -> dict[str, Any]:
        conn = self.c.connectors.get(connector_id)
        if conn is None:
            return {"status": "NotSupported"}
        self.c.unlocks.append(connector_id)
        if conn.running:
            self.c._later(functools.partial(self.c._end, conn, "UnlockCommand", unplug=True))
        return {"status": "Unlocked"}

    def _get_configuration(self, key: list[str] | None = None, **_: Any) -> dict[str, Any]:
        known = self.c.configuration()
        asked = key or list(known)
        return {
            "configuration_key": [
                {"key": k, "readonly": known[k][1], "value": known[k][0]}
                for k in asked
                if k in known
            ],
            "unknown_key": [k for k in asked if k not in known] or None,
        }
