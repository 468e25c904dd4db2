"""DNP3 controls carried out through DERIM's control layer.

The dnp3py outstation calls its command handler synchronously and builds the response from
what the handler returns. The outstation therefore runs on a thread of its own, and this
handler hands each select or operate to DERIM's event loop and waits for the outcome there:
the status the master reads is what DERIM and the device made of the command, never an
assumed success.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from dnp3.core.enums import CommandStatus as ControlStatus
from dnp3.core.enums import ControlCode
from dnp3.outstation import CommandResult as ControlResult
from dnp3.outstation import DefaultCommandHandler

from derim.errors import DerimError
from derim.grid.dnp3.config import Dnp3Config, Target
from derim.grid.dnp3.points import (
    combined_status,
    error_status,
    result_status,
    setpoint_request,
    switch_command,
    switch_request,
    target_ids,
)
from derim.grid.fleet import FleetAccess
from derim.models.command import CommandRequest

log = logging.getLogger(__name__)


class FleetControls(DefaultCommandHandler):
    """The outstation's command handler: group 41 setpoints and group 12 CROBs become DERIM
    commands (``source`` "dnp3"); a SELECT is a dry run, an OPERATE or DIRECT OPERATE is sent.

    Every method is called on the outstation's thread and blocks it until DERIM has the
    outcome, at most ``command_timeout_s`` (then TIMEOUT, the command possibly still under
    way). Cold and warm restart and counter freezes stay unsupported.
    """

    def __init__(
        self,
        config: Dnp3Config,
        fleet: FleetAccess,
        loop: asyncio.AbstractEventLoop,
        carried_out: Callable[[], None],
    ) -> None:
        """``loop`` is DERIM's event loop; ``carried_out`` is called on it after each sent
        command (to refresh the points at once)."""
        self.config = config
        self.fleet = fleet
        self.loop = loop
        self.carried_out = carried_out
        self.setpoints = {point.index: point for point in config.analog_outputs}
        self.switches = {point.index: point for point in config.binary_outputs}

    # Analog outputs (group 41)

    def select_analog_output(self, index: int, value: float) -> ControlResult:
        """Check a setpoint without sending it."""
        return self._wait(self._setpoint(index, value, dry_run=True))

    def operate_analog_output(
        self, index: int, value: float, select_sequence: int
    ) -> ControlResult:
        """Send a selected setpoint."""
        return self._wait(self._setpoint(index, value, dry_run=False))

    def direct_operate_analog_output(self, index: int, value: float) -> ControlResult:
        """Send a setpoint."""
        return self._wait(self._setpoint(index, value, dry_run=False))

    # Control relay output blocks (group 12)

    def select_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> ControlResult:
        """Check a switching command without sending it."""
        return self._wait(self._switch(index, code, dry_run=True))

    def operate_binary_output(
        self,
        index: int,
        code: ControlCode,
        count: int,
        on_time: int,
        off_time: int,
        select_sequence: int,
    ) -> ControlResult:
        """Send a selected switching command."""
        return self._wait(self._switch(index, code, dry_run=False))

    def direct_operate_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> ControlResult:
        """Send a switching command."""
        return self._wait(self._switch(index, code, dry_run=False))

    def _wait(self, work: Coroutine[Any, Any, ControlStatus]) -> ControlResult:
        """Run ``work`` on DERIM's loop and block until its status; never raises (the
        library would report a raise as UNDEFINED and skip the request's later points)."""
        try:
            future = asyncio.run_coroutine_threadsafe(work, self.loop)
        except RuntimeError as exc:
            work.close()
            log.warning("dnp3 control refused: DERIM is shutting down (%s)", exc)
            return ControlResult(ControlStatus.HARDWARE_ERROR, "DERIM is shutting down")
        try:
            return ControlResult(future.result(timeout=self.config.command_timeout_s))
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("dnp3 control: no outcome within %g s", self.config.command_timeout_s)
            return ControlResult(ControlStatus.TIMEOUT, "no outcome in time")
        except concurrent.futures.CancelledError:
            return ControlResult(ControlStatus.HARDWARE_ERROR, "DERIM is shutting down")
        except Exception:
            log.exception("dnp3 control failed unexpectedly")
            return ControlResult(ControlStatus.HARDWARE_ERROR, "internal error")

    async def _setpoint(self, index: int, value: float, *, dry_run: bool) -> ControlStatus:
        point = self.setpoints.get(index)
        if point is None:
            log.info("dnp3 analog output %d is not mapped", index)
            return ControlStatus.NOT_SUPPORTED
        hold = self.config.setpoint_hold_s
        expires_at = None if hold is None else datetime.now(UTC) + timedelta(seconds=hold)
        try:
            request = setpoint_request(point, value, expires_at)
        except ValueError as exc:
            log.info("dnp3 analog output %d: %s is not a usable setpoint: %s", index, value, exc)
            return ControlStatus.OUT_OF_RANGE
        return await self._submit(f"analog output {index}", point, request, dry_run)

    async def _switch(self, index: int, code: ControlCode, *, dry_run: bool) -> ControlStatus:
        point = self.switches.get(index)
        command = None if point is None else switch_command(point, code)
        if point is None or command is None:
            log.info("dnp3 binary output %d: %r is not carried out", index, code)
            return ControlStatus.NOT_SUPPORTED
        return await self._submit(f"binary output {index}", point, switch_request(command), dry_run)

    async def _submit(
        self, name: str, target: Target, request: CommandRequest, dry_run: bool
    ) -> ControlStatus:
        """Submit ``request`` to each targeted device in turn (one's failure does not stop
        the others) and combine their outcomes into one status."""
        if dry_run:
            request = request.model_copy(update={"dry_run": True})
        statuses = []
        for device_id in target_ids(target, self.fleet.devices()):
            try:
                result = await self.fleet.submit(device_id, request)
            except DerimError as exc:
                status = error_status(exc)
                log.info("dnp3 %s: %s to %s not carried out: %s", name, request.command.value,
                         device_id, exc)  # fmt: skip
            else:
                status = result_status(result)
            statuses.append(status)
        status = combined_status(statuses)
        log.info("dnp3 %s: %s%s -> %s", name, request.command.value,
                 " (select)" if dry_run else "", status.name)  # fmt: skip
        if not dry_run:
            self.carried_out()
        return status
