"""Commands to simulated chargers through the real central system, in OCPP 1.6 and 2.0.1:
each reports the charger's own answer, and the charger does what was acknowledged."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from ocpp_helpers import central, raw_socket, simulated

from async_helpers import until
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, OcppConnection
from derim.models.session import SessionState
from derim.services import Services

VERSIONS = ["1.6", "2.0.1"]


async def command(
    services: Services, device_id: str, kind: CommandType, value: float | None = None, **params: Any
) -> Any:
    """Send a command through the central and return its record."""
    assert services.ocpp is not None
    request = CommandRequest(command=kind, value=value, parameters=params)
    device = services.registry.get(device_id)
    services.ocpp.validate(device, request)
    return await services.ocpp.send(device, request)


@pytest.mark.parametrize("version", VERSIONS)
async def test_remote_start_and_stop_make_a_whole_session(tmp_path: Path, version: str) -> None:
    """start_charging is acknowledged and the charger starts a session DERIM records;
    stop_charging (by connector) ends it with energy."""
    async with central(tmp_path) as services, simulated(services, "CP-rs", version) as sim:
        started = await command(services, "CP-rs", CommandType.START_CHARGING, id_tag="FLEET1")
        assert started.status is CommandStatus.ACKNOWLEDGED
        assert started.device_response["status"] == "Accepted"
        await until(lambda: services.sessions.on_connector("CP-rs", 1) is not None)
        await until(lambda: sim.power_kw() > 0)
        await until(lambda: (services.sessions.on_connector("CP-rs", 1).energy_kwh or 0) > 0)  # type: ignore[union-attr]
        stopped = await command(services, "CP-rs", CommandType.STOP_CHARGING, connector_id=1)
        assert stopped.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: not services.sessions.active("CP-rs"))
        (session,) = await services.sessions.history("CP-rs")
        assert session.state is SessionState.COMPLETED
        assert session.id_tag == "FLEET1"
        assert session.energy_kwh is not None
        assert session.energy_kwh > 0


@pytest.mark.parametrize("version", VERSIONS)
async def test_power_limits_stack_by_purpose_and_clear(tmp_path: Path, version: str) -> None:
    """A charger limit caps a transaction limit above it; the composite schedule reports the
    lower one; clearing the charger limit lets the transaction limit rule; the EV's power
    follows each step."""
    async with (
        central(tmp_path) as services,
        simulated(services, "CP-lim", version, max_power_kw=22.0) as sim,
    ):
        await sim.plug_in(1, ev_max_kw=22.0)
        await until(lambda: services.sessions.on_connector("CP-lim", 1) is not None)
        tx_limit = await command(
            services, "CP-lim", CommandType.SET_POWER_LIMIT, 7.0, connector_id=1
        )
        assert tx_limit.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: abs(sim.power_kw() - 7.0) < 0.05)
        cap = await command(services, "CP-lim", CommandType.SET_POWER_LIMIT, 5.0)
        assert cap.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: abs(sim.power_kw() - 5.0) < 0.05)
        schedule = await command(
            services, "CP-lim", CommandType.GET_COMPOSITE_SCHEDULE, connector_id=1, unit="W"
        )
        assert schedule.status is CommandStatus.ACKNOWLEDGED
        periods = _periods(schedule.device_response)
        assert periods[0]["limit"] == pytest.approx(5000)
        cleared = await command(
            services, "CP-lim", CommandType.CLEAR_POWER_LIMIT, purpose="charger"
        )
        assert cleared.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: abs(sim.power_kw() - 7.0) < 0.05)


def _periods(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The periods of a GetCompositeSchedule answer (1.6 or 2.0.1 layout)."""
    schedule = answer.get("charging_schedule") or answer["schedule"]
    return list(schedule["charging_schedule_period"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_limit_in_amperes_is_sent_as_amperes(tmp_path: Path, version: str) -> None:
    """A limit in A is installed as an ampere schedule: 10 A on three phases at 230 V is 6.9 kW."""
    async with central(tmp_path) as services, simulated(services, "CP-amp", version) as sim:
        await sim.plug_in(1)
        await until(lambda: services.sessions.on_connector("CP-amp", 1) is not None)
        request = CommandRequest(
            command=CommandType.SET_POWER_LIMIT, value=10, unit="A", parameters={"connector_id": 1}
        )
        assert services.ocpp is not None
        result = await services.ocpp.send(services.registry.get("CP-amp"), request)
        assert result.status is CommandStatus.ACKNOWLEDGED
        await until(lambda: abs(sim.power_kw() - 6.9) < 0.05)


@pytest.mark.parametrize("version", VERSIONS)
async def test_availability_reset_and_unlock_reach_the_charger(
    tmp_path: Path, version: str
) -> None:
    """change_availability, reset and unlock_connector are acknowledged and carried out; a
    remote start on the connector made inoperative is the charger's Rejected, reported as such."""
    async with central(tmp_path) as services, simulated(services, "CP-ops", version) as sim:
        off = await command(
            services, "CP-ops", CommandType.CHANGE_AVAILABILITY, operative=False, connector_id=1
        )
        assert off.status is CommandStatus.ACKNOWLEDGED
        assert sim.availability[1] == "Inoperative"
        refused = await command(services, "CP-ops", CommandType.START_CHARGING)
        assert refused.status is CommandStatus.REJECTED
        assert refused.device_response["status"] == "Rejected"
        unlock = await command(services, "CP-ops", CommandType.UNLOCK_CONNECTOR, connector_id=1)
        assert unlock.status is CommandStatus.ACKNOWLEDGED
        assert sim.unlocks == [1]
        reset = await command(services, "CP-ops", CommandType.RESET, type="soft")
        assert reset.status is CommandStatus.ACKNOWLEDGED
        assert len(sim.resets) == 1


async def test_commands_are_checked_before_sending(tmp_path: Path) -> None:
    """A transaction limit without a running session, a negative limit, an unknown unit and a
    command chargers do not take are refused before anything is sent."""
    async with central(tmp_path) as services, simulated(services, "CP-chk"):
        bad = [
            (CommandType.SET_POWER_LIMIT, 3.0, {"purpose": "transaction", "connector_id": 1}),
            (CommandType.SET_POWER_LIMIT, -1.0, {}),
            (CommandType.CHANGE_AVAILABILITY, None, {}),
            (CommandType.SET_POWER_FACTOR, 0.9, {}),
            (CommandType.STOP_CHARGING, None, {"connector_id": 1}),
        ]
        for kind, value, params in bad:
            with pytest.raises(InvalidRequestError):
                await command(services, "CP-chk", kind, value, **params)


async def test_a_charger_that_does_not_answer_times_out(tmp_path: Path) -> None:
    """A command to a charger that never answers ends timed_out after the call timeout."""
    async with central(tmp_path, ocpp_call_timeout_s=0.3) as services:
        async with raw_socket(services, "CP-mute"):
            await until(lambda: services.ocpp is not None and services.ocpp.connected == 1)
            result = await command(services, "CP-mute", CommandType.RESET)
        assert result.status is CommandStatus.TIMED_OUT


def charger_in(site: str, device_id: str, rated_kw: float) -> DERDevice:
    """A registered charger that belongs to ``site``."""
    return DERDevice(
        id=device_id,
        device_type=DeviceType.EV_CHARGER,
        rated_power_kw=rated_kw,
        groups=[site],
        connection=OcppConnection(protocol="ocpp", charge_point_id=device_id),
    )


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_site_limit_is_re_split_as_sessions_start_and_stop(
    tmp_path: Path, version: str
) -> None:
    """A 12 kW site limit goes whole to a lone session (up to its charger's rating), is
    halved when a second session starts, and goes back when the first stops; the EVs' power
    follows every split."""
    devices = [charger_in("depot", "CP-s1", 11.0), charger_in("depot", "CP-s2", 22.0)]
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(central(tmp_path, devices=devices))
        one = await stack.enter_async_context(
            simulated(services, "CP-s1", version, max_power_kw=11.0)
        )
        two = await stack.enter_async_context(
            simulated(services, "CP-s2", version, max_power_kw=22.0)
        )
        assert services.sites is not None
        view = await services.sites.set_limit("depot", 12.0)
        assert view.shares == []
        await one.plug_in(1, ev_max_kw=22.0)
        await until(lambda: abs(one.power_kw() - 11.0) < 0.05)
        await two.plug_in(1, ev_max_kw=22.0)
        await until(lambda: abs(one.power_kw() - 6.0) < 0.05 and abs(two.power_kw() - 6.0) < 0.05)
        sites = services.sites
        await until(lambda: len(sites.view("depot").shares) == 2)
        view = sites.view("depot")
        assert sorted(s.limit_kw for s in view.shares) == [6.0, 6.0]
        assert {s.answer for s in view.shares} == {"Accepted"}
        await one.unplug(1)
        await until(lambda: abs(two.power_kw() - 12.0) < 0.05)
        cleared = await services.sites.set_limit("depot", None)
        assert cleared.limit_kw is None
        await until(lambda: abs(two.power_kw() - 22.0) < 0.05)
