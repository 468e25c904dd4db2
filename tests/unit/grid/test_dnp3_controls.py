"""The outstation's command handler: called synchronously on another thread (as dnp3py's
outstation does), it submits through a fake control layer on the test's loop and answers
with the outcome DERIM reached, never an assumed success."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from dnp3.core.enums import CommandStatus as ControlStatus
from dnp3.core.enums import ControlCode

from derim.errors import DerimError, DeviceRejected
from derim.grid.dnp3.config import Dnp3Config
from derim.grid.dnp3.controls import FleetControls
from derim.grid.fleet import FleetAccess
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.device import DERDevice

CONFIG = {
    "analog_outputs": [{"index": 0, "group": "site", "scale": 1000}],
    "binary_outputs": [{"index": 2, "device": "pv"}],
}


class FakeControl:
    """The control layer's ``submit``: records each request; answers with a status per
    device, raises a given error, or never answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, CommandRequest]] = []
        self.answers: dict[str, CommandStatus | DerimError | None] = {}

    async def submit(self, device_id: str, request: CommandRequest) -> CommandResult:
        self.requests.append((device_id, request))
        answer = self.answers.get(device_id, CommandStatus.ACKNOWLEDGED)
        if isinstance(answer, DerimError):
            raise answer
        if answer is None:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        return CommandResult(device_id=device_id, request=request, status=answer)

    async def latest(self, device_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        return {}


def devices() -> list[DERDevice]:
    return [DERDevice(id="pv", groups=["site"]), DERDevice(id="bat", groups=["site"])]


def controls(control: FakeControl, **settings: object) -> tuple[FleetControls, list[None]]:
    """The handler over ``control``, and a list that grows each time it asks for a refresh."""
    config = Dnp3Config.model_validate({**CONFIG, **settings})
    fleet = FleetAccess(control.submit, devices, control.latest)
    refreshes: list[None] = []
    handler = FleetControls(
        config, fleet, asyncio.get_running_loop(), lambda: refreshes.append(None)
    )
    return handler, refreshes


async def test_a_direct_operate_reaches_every_group_member_and_succeeds_when_all_ack() -> None:
    """3000 on AO 0 is a 3 kW limit from dnp3 to pv and bat; SUCCESS; points refresh."""
    control = FakeControl()
    handler, refreshes = controls(control)
    result = await asyncio.to_thread(handler.direct_operate_analog_output, 0, 3000.0)
    assert result.status is ControlStatus.SUCCESS
    assert [d for d, _ in control.requests] == ["pv", "bat"]
    request = control.requests[0][1]
    assert (request.command, request.value, request.source) == (
        CommandType.SET_POWER_LIMIT,
        3.0,
        "dnp3",
    )
    assert not request.dry_run
    assert request.expires_at is None
    assert refreshes == [None]


async def test_a_select_is_a_dry_run() -> None:
    """SELECT submits with dry_run and asks for no refresh; OPERATE then sends."""
    control = FakeControl()
    control.answers = {"pv": CommandStatus.VALIDATED, "bat": CommandStatus.VALIDATED}
    handler, refreshes = controls(control)
    selected = await asyncio.to_thread(handler.select_analog_output, 0, 1000.0)
    assert selected.status is ControlStatus.SUCCESS
    assert all(request.dry_run for _, request in control.requests)
    assert refreshes == []


async def test_one_refusal_fails_the_point_but_the_others_still_get_it() -> None:
    """pv refuses (HARDWARE_ERROR for the point); bat is still commanded."""
    control = FakeControl()
    control.answers = {"pv": DeviceRejected("exception code 4")}
    handler, _ = controls(control)
    result = await asyncio.to_thread(handler.operate_analog_output, 0, 1000.0, 1)
    assert result.status is ControlStatus.HARDWARE_ERROR
    assert [d for d, _ in control.requests] == ["pv", "bat"]


async def test_no_answer_in_time_is_a_timeout_not_a_success() -> None:
    """When DERIM has no outcome within command_timeout_s the master reads TIMEOUT."""
    control = FakeControl()
    control.answers = {"pv": None}
    handler, refreshes = controls(control, command_timeout_s=0.05)
    result = await asyncio.to_thread(handler.direct_operate_analog_output, 0, 1000.0)
    assert result.status is ControlStatus.TIMEOUT
    assert refreshes == []


async def test_setpoints_lapse_after_the_hold_time() -> None:
    """With setpoint_hold_s, a setpoint expires that long after it was written."""
    control = FakeControl()
    handler, _ = controls(control, setpoint_hold_s=300)
    before = datetime.now(UTC)
    await asyncio.to_thread(handler.direct_operate_analog_output, 0, 1000.0)
    expires_at = control.requests[0][1].expires_at
    assert expires_at is not None
    assert (expires_at - before).total_seconds() >= 300


async def test_crob_latches_become_connect_and_disconnect() -> None:
    """LATCH_OFF then LATCH_ON on CROB 2 disconnect and reconnect pv; a pulse is refused
    without reaching DERIM."""
    control = FakeControl()
    handler, _ = controls(control)
    off = await asyncio.to_thread(
        handler.direct_operate_binary_output, 2, ControlCode.LATCH_OFF, 1, 0, 0
    )
    on = await asyncio.to_thread(handler.operate_binary_output, 2, ControlCode.LATCH_ON, 1, 0, 0, 3)
    pulse = await asyncio.to_thread(
        handler.direct_operate_binary_output, 2, ControlCode.PULSE_ON, 1, 100, 100
    )
    assert (off.status, on.status) == (ControlStatus.SUCCESS, ControlStatus.SUCCESS)
    assert pulse.status is ControlStatus.NOT_SUPPORTED
    assert [(d, r.command) for d, r in control.requests] == [
        ("pv", CommandType.DISCONNECT),
        ("pv", CommandType.CONNECT),
    ]


async def test_unmapped_points_and_unusable_values_never_reach_derim() -> None:
    """An unknown AO or CROB index is NOT_SUPPORTED; an infinite setpoint OUT_OF_RANGE."""
    control = FakeControl()
    handler, _ = controls(control)
    unknown_ao = await asyncio.to_thread(handler.direct_operate_analog_output, 5, 1.0)
    unknown_crob = await asyncio.to_thread(
        handler.select_binary_output, 0, ControlCode.LATCH_ON, 1, 0, 0
    )
    infinite = await asyncio.to_thread(handler.direct_operate_analog_output, 0, float("inf"))
    assert unknown_ao.status is ControlStatus.NOT_SUPPORTED
    assert unknown_crob.status is ControlStatus.NOT_SUPPORTED
    assert infinite.status is ControlStatus.OUT_OF_RANGE
    assert control.requests == []
