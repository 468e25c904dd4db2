"""The VEN's decisions (opt in or out, what it hands to the dispatcher), its report values,
and the dispatcher's commands, against a fake control layer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from async_helpers import until
from derim.adapters.base import Backoff
from derim.errors import DeviceRejected, InvalidRequestError, StorageError
from derim.grid.fleet import FleetAccess
from derim.grid.openadr import dispatch
from derim.grid.openadr.config import OpenAdrConfig, Programme
from derim.grid.openadr.dispatch import LimitDispatcher
from derim.grid.openadr.signals import Step, power_limit
from derim.grid.openadr.ven import OpenAdrVen
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.tasks import cancel_and_wait

T0 = datetime(2025, 1, 6, 17, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class FakeFleet:
    """Devices, their latest readings and a control layer that records what it is sent."""

    def __init__(self, devices: list[DERDevice], refuse: Sequence[str] = ()) -> None:
        self.devices = devices
        self.refuse = set(refuse)
        self.answers: dict[str, CommandStatus | Exception] = {}
        """What a device answers a command that is not a dry run (default: acknowledged)."""
        self.sent: list[tuple[str, CommandRequest]] = []
        self.records: list[CommandResult] = []
        """The record of each command carried out, as the control layer returns it."""
        self.readings: dict[str, dict[str, object]] = {}
        self.storage_down = False

    async def submit(self, device_id: str, request: CommandRequest) -> CommandResult:
        if device_id in self.refuse:
            raise InvalidRequestError("command", "the device takes no power limit")
        self.sent.append((device_id, request))
        answer = self.answers.get(device_id, CommandStatus.ACKNOWLEDGED)
        if request.dry_run:
            answer = CommandStatus.VALIDATED
        elif isinstance(answer, Exception):
            raise answer
        self.records.append(CommandResult(device_id=device_id, request=request, status=answer))
        return self.records[-1]

    async def latest(self, device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        if self.storage_down:
            raise StorageError("database is locked")
        return {d: self.readings[d] for d in device_ids if d in self.readings}

    def access(self) -> FleetAccess:
        return FleetAccess(self.submit, lambda: self.devices, self.latest)

    def carried_out(self) -> list[tuple[str, CommandType, float | None]]:
        return [(d, r.command, r.value) for d, r in self.sent if not r.dry_run]


def device(device_id: str, kind: DeviceType, rated_kw: float | None = 10.0) -> DERDevice:
    return DERDevice(id=device_id, device_type=kind, rated_power_kw=rated_kw, groups=["dr"])


PV = device("pv", DeviceType.SOLAR_PV)
BATTERY = device("bat", DeviceType.BATTERY)
METER = device("meter", DeviceType.METER, None)


def planned(link: OpenAdrVen) -> dict[str, CommandRequest]:
    """The limits the link's dispatcher will hold in the middle of ``event()``."""
    return link.dispatcher.desired(datetime.now(UTC) + 1.5 * MINUTE)


def ven(fleet: FakeFleet, **programme: Any) -> OpenAdrVen:
    config = OpenAdrConfig(
        vtn_url="http://127.0.0.1:9/OpenADR2/Simple/2.0b",
        ven_name="v",
        programmes=[Programme(group="dr", market_context="oadr://dr", **programme)],
    )
    return OpenAdrVen(config, fleet.access())


def event(level: object, *, status: str = "far", test: bool = False) -> dict[str, Any]:
    start = datetime.now(UTC) + MINUTE
    interval = {"uid": 0, "dtstart": start, "duration": MINUTE, "signal_payload": level}
    return {
        "event_descriptor": {"event_id": "ev-1", "market_context": "oadr://dr",
                             "event_status": status, "test_event": test},
        "active_period": {"dtstart": start, "duration": MINUTE},
        "event_signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                           "intervals": [interval]}],
        "targets_by_type": {"ven_id": ["v"]},
    }  # fmt: skip


async def test_an_event_is_opted_into_for_the_members_that_can_carry_it() -> None:
    """Each member of a wanted type is asked with a dry run; the event is opted into and
    its steps cover only the members the control layer accepted."""
    fleet = FakeFleet([PV, BATTERY, METER], refuse=["bat"])
    link = ven(fleet, device_types=[DeviceType.SOLAR_PV, DeviceType.BATTERY])
    assert await link.handle_event(event(2)) == "optIn"
    assert [(d, r.dry_run, r.value, r.unit) for d, r in fleet.sent] == [("pv", True, 40, "%")]
    assert list(planned(link)) == ["pv"]
    assert fleet.carried_out() == []


async def test_a_normal_level_event_is_opted_into_without_limits() -> None:
    """SIMPLE level 0 (normal operation) is carried by doing nothing: opted into, no limit."""
    link = ven(FakeFleet([PV]))
    assert await link.handle_event(event(0)) == "optIn"
    assert planned(link) == {}


async def test_an_event_no_member_can_carry_is_opted_out() -> None:
    """When every member refuses the dry run, or the group has no member of a wanted type,
    the event is opted out of and nothing is planned."""
    fleet = FakeFleet([PV, METER], refuse=["pv", "meter"])
    assert await ven(fleet).handle_event(event(2)) == "optOut"
    typed = ven(FakeFleet([PV]), device_types=[DeviceType.EV_CHARGER])
    assert await typed.handle_event(event(2)) == "optOut"
    assert planned(typed) == {}


@pytest.mark.parametrize("payload", [9, "lots", None])
async def test_a_malformed_update_opts_out_and_drops_the_event(payload: object) -> None:
    """An update of an accepted event with an unreadable level is opted out of and its
    limits are no longer planned."""
    link = ven(FakeFleet([PV]))
    assert await link.handle_event(event(1)) == "optIn"
    assert await link.handle_event(event(payload)) == "optOut"
    assert planned(link) == {}


async def test_a_cancelled_event_is_dropped_and_answered_as_before() -> None:
    """Cancellation drops the event's steps and repeats the earlier answer."""
    link = ven(FakeFleet([PV]))
    await link.handle_event(event(3))
    assert await link.handle_event(event(3, status="cancelled")) == "optIn"
    assert planned(link) == {}


async def test_a_test_event_is_answered_but_not_carried_out() -> None:
    """A test event is opted into when the group could carry it, and nothing is planned."""
    link = ven(FakeFleet([PV]))
    assert await link.handle_event(event(2, test=True)) == "optIn"
    assert planned(link) == {}


async def test_the_report_sums_the_members_fresh_power() -> None:
    """The group's value is the sum of its members' fresh power_kw (a stale reading and a
    reading without power left out); no value without readings or when storage fails."""
    fleet = FakeFleet([PV, BATTERY, METER])
    link = ven(fleet)
    programme = link.config.programmes[0]
    assert await link.group_power(programme) == []
    now = datetime.now(UTC)
    fleet.readings = {
        "pv": {"timestamp": now, "power_kw": 4.5},
        "bat": {"timestamp": now - timedelta(hours=1), "power_kw": 2.0},
        "meter": {"timestamp": now, "voltage_v": 230.0},
    }
    ((_, value),) = await link.group_power(programme)
    assert value == 4.5
    fleet.readings["bat"]["timestamp"] = now
    ((_, value),) = await link.group_power(programme)
    assert value == 6.5
    fleet.storage_down = True
    assert await link.group_power(programme) == []


async def test_the_dispatcher_sends_at_each_start_and_clears_only_what_was_lifted() -> None:
    """Nothing before a step starts; its limit at the start, once; nothing at its natural
    end (the limit lapses); one clear when an event is dropped before its end."""
    fleet = FakeFleet([PV])
    dispatcher = LimitDispatcher(fleet.access())
    dispatcher.put("a", [Step(T0, T0 + MINUTE, {"pv": power_limit(40, "%", T0 + MINUTE)})])
    await dispatcher.apply(T0 - MINUTE)
    assert fleet.carried_out() == []
    await dispatcher.apply(T0)
    await dispatcher.apply(T0 + MINUTE / 2)
    assert fleet.carried_out() == [("pv", CommandType.SET_POWER_LIMIT, 40)]
    await dispatcher.apply(T0 + MINUTE)
    assert len(fleet.carried_out()) == 1
    assert dispatcher.desired(T0) == {}  # the ended event is forgotten
    end = T0 + 3 * MINUTE
    dispatcher.put("b", [Step(T0 + 2 * MINUTE, end, {"pv": power_limit(10, "%", end)})])
    await dispatcher.apply(T0 + 2 * MINUTE)
    dispatcher.drop("b")
    await dispatcher.apply(T0 + 2 * MINUTE)
    await dispatcher.apply(T0 + 2.5 * MINUTE)
    assert fleet.carried_out() == [
        ("pv", CommandType.SET_POWER_LIMIT, 40),
        ("pv", CommandType.SET_POWER_LIMIT, 10), ("pv", CommandType.CLEAR_POWER_LIMIT, None)
    ]  # fmt: skip
    assert fleet.sent[-1][1].source == "openadr"


async def test_the_most_restrictive_of_overlapping_events_applies() -> None:
    """3 kW beats 50 % of a 10 kW rating; when the 3 kW event goes, the 50 % one is sent."""
    fleet = FakeFleet([PV])
    dispatcher = LimitDispatcher(fleet.access())
    end = T0 + MINUTE
    dispatcher.put("pct", [Step(T0, end, {"pv": power_limit(50, "%", end)})])
    dispatcher.put("kw", [Step(T0, end, {"pv": power_limit(3, "kW", end)})])
    await dispatcher.apply(T0)
    dispatcher.drop("kw")
    await dispatcher.apply(T0)
    assert [(r.value, r.unit) for _, r in fleet.sent] == [(3, "kW"), (50, "%")]


async def test_the_dispatcher_wakes_for_a_future_step() -> None:
    """Running, the dispatcher sends a step's limit once its start has come."""
    fleet = FakeFleet([PV])
    dispatcher = LimitDispatcher(fleet.access())
    task = asyncio.create_task(dispatcher.run())
    try:
        start = datetime.now(UTC) + timedelta(seconds=0.2)
        end = start + MINUTE
        dispatcher.put("a", [Step(start, end, {"pv": power_limit(20, "%", end)})])
        await until(lambda: bool(fleet.sent))
        assert datetime.now(UTC) >= start
        assert fleet.carried_out() == [("pv", CommandType.SET_POWER_LIMIT, 20)]
    finally:
        await cancel_and_wait(task)


@pytest.mark.parametrize(
    "answer",
    [
        CommandStatus.FAILED,
        CommandStatus.REJECTED,
        CommandStatus.TIMED_OUT,
        DeviceRejected("pv", "limit not supported now"),
    ],
)
async def test_a_limit_the_device_did_not_take_is_sent_again_after_a_backoff(
    answer: CommandStatus | Exception,
) -> None:
    """A limit that failed, was rejected or timed out is not held: it is sent again once the
    backoff (10 s, then 20 s) has passed, not before, and no more once acknowledged."""
    fleet = FakeFleet([PV])
    fleet.answers["pv"] = answer
    dispatcher = LimitDispatcher(fleet.access(), backoff=Backoff(10, 40, jitter=0))
    end = T0 + 10 * MINUTE
    dispatcher.put("a", [Step(T0, end, {"pv": power_limit(40, "%", end)})])
    second = timedelta(seconds=1)
    for at in (0, 9, 10, 29):
        await dispatcher.apply(T0 + at * second)
    assert len(fleet.carried_out()) == 2
    del fleet.answers["pv"]
    for at in (30, 31, 300):
        await dispatcher.apply(T0 + at * second)
    assert fleet.carried_out() == 3 * [("pv", CommandType.SET_POWER_LIMIT, 40)]


async def test_a_limit_still_under_way_is_held_and_a_failed_clear_is_retried() -> None:
    """A limit recorded as ``sent`` (the device has yet to answer) is not sent again; a clear
    that fails is sent again after the backoff, and not once the limit has lapsed."""
    fleet = FakeFleet([PV])
    fleet.answers["pv"] = CommandStatus.SENT
    dispatcher = LimitDispatcher(fleet.access(), backoff=Backoff(10, 40, jitter=0))
    end = T0 + MINUTE
    dispatcher.put("a", [Step(T0, end, {"pv": power_limit(40, "%", end)})])
    await dispatcher.apply(T0)
    await dispatcher.apply(T0 + timedelta(seconds=1))
    fleet.answers["pv"] = CommandStatus.FAILED
    dispatcher.drop("a")
    for at in (2, 5, 12, 100):
        await dispatcher.apply(T0 + timedelta(seconds=at))
    assert [command for _, command, _ in fleet.carried_out()] == [
        CommandType.SET_POWER_LIMIT, CommandType.CLEAR_POWER_LIMIT,
        CommandType.CLEAR_POWER_LIMIT,
    ]  # fmt: skip


async def test_a_command_failed_after_it_was_sent_is_sent_again_after_a_backoff() -> None:
    """A limit recorded ``sent`` and later completed as failed by the control layer is sent
    again after the backoff; a clear failed that way leaves the device taken to hold its limit,
    so the clear is sent again too."""
    fleet = FakeFleet([PV])
    fleet.answers["pv"] = CommandStatus.SENT
    dispatcher = LimitDispatcher(fleet.access(), backoff=Backoff(10, 40, jitter=0))
    end = T0 + 10 * MINUTE
    dispatcher.put("a", [Step(T0, end, {"pv": power_limit(40, "%", end)})])
    second = timedelta(seconds=1)
    await dispatcher.apply(T0)
    await dispatcher.apply(T0 + second)
    assert len(fleet.records) == 1  # under way: held
    fleet.records[0].status = CommandStatus.TIMED_OUT
    for at in (2, 11):
        await dispatcher.apply(T0 + at * second)
    assert len(fleet.records) == 1  # the backoff first
    await dispatcher.apply(T0 + 12 * second)
    assert len(fleet.records) == 2
    dispatcher.drop("a")
    await dispatcher.apply(T0 + 13 * second)
    fleet.records[-1].status = CommandStatus.FAILED
    for at in (14, 20, 24):
        await dispatcher.apply(T0 + at * second)
    assert fleet.carried_out() == [
        ("pv", CommandType.SET_POWER_LIMIT, 40), ("pv", CommandType.SET_POWER_LIMIT, 40),
        ("pv", CommandType.CLEAR_POWER_LIMIT, None), ("pv", CommandType.CLEAR_POWER_LIMIT, None),
    ]  # fmt: skip


async def test_the_running_dispatcher_looks_again_at_commands_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Running, the dispatcher notices a command under way that its device failed, without a
    step starting or ending, and sends it again after the backoff."""
    monkeypatch.setattr(dispatch, "SENT_CHECK", timedelta(seconds=0.05))
    fleet = FakeFleet([PV])
    fleet.answers["pv"] = CommandStatus.SENT
    dispatcher = LimitDispatcher(fleet.access(), backoff=Backoff(0.05, 0.05, jitter=0))
    task = asyncio.create_task(dispatcher.run())
    try:
        end = datetime.now(UTC) + 10 * MINUTE
        dispatcher.put("a", [Step(datetime.now(UTC), end, {"pv": power_limit(20, "%", end)})])
        await until(lambda: len(fleet.records) == 1)
        fleet.answers["pv"] = CommandStatus.ACKNOWLEDGED
        fleet.records[0].status = CommandStatus.FAILED
        await until(lambda: len(fleet.records) == 2)
    finally:
        await cancel_and_wait(task)


async def test_the_running_dispatcher_wakes_for_a_retry() -> None:
    """Running, the dispatcher sends a failed limit again once its backoff has passed,
    without waiting for the step's end."""
    fleet = FakeFleet([PV])
    fleet.answers["pv"] = CommandStatus.FAILED
    dispatcher = LimitDispatcher(fleet.access(), backoff=Backoff(0.05, 0.05, jitter=0))
    task = asyncio.create_task(dispatcher.run())
    try:
        end = datetime.now(UTC) + 10 * MINUTE
        dispatcher.put("a", [Step(datetime.now(UTC), end, {"pv": power_limit(20, "%", end)})])
        await until(lambda: len(fleet.sent) == 1)
        del fleet.answers["pv"]
        await until(lambda: len(fleet.sent) == 2)
    finally:
        await cancel_and_wait(task)


async def test_keep_only_releases_the_events_not_listed() -> None:
    """Events missing from the VTN's list are dropped (their limits cleared), the others
    kept."""
    fleet = FakeFleet([PV, BATTERY])
    dispatcher = LimitDispatcher(fleet.access())
    end = T0 + MINUTE
    dispatcher.put("a", [Step(T0, end, {"pv": power_limit(40, "%", end)})])
    dispatcher.put("b", [Step(T0, end, {"bat": power_limit(30, "%", end)})])
    await dispatcher.apply(T0)
    assert dispatcher.keep_only({"b", "c"}) == ["a"]
    await dispatcher.apply(T0)
    assert fleet.carried_out()[-1] == ("pv", CommandType.CLEAR_POWER_LIMIT, None)
    assert list(dispatcher.desired(T0)) == ["bat"]


async def test_the_ven_tells_where_it_stands() -> None:
    """Before run: not started; with no VTN listening: vtn unreachable; once ended:
    stopped."""
    link = ven(FakeFleet([PV]))
    assert link.state == "not started"
    task = asyncio.create_task(link.run())
    try:
        await until(lambda: link.state == "vtn unreachable")
    finally:
        await cancel_and_wait(task)
        await link.aclose()
    assert link.state == "stopped"
