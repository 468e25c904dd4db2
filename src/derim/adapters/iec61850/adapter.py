"""The IEC 61850 adapter: polls one IED's logical-node data over MMS through its profile and
writes its setpoints, confirming each by reading it back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from derim.adapters.base import (
    PollingAdapter,
    PollSettings,
    canonical_reading,
    read_back_result,
    requested_value,
)
from derim.adapters.iec61850.client import MmsLink
from derim.adapters.iec61850.decode import (
    AccessFailure,
    decode_reading,
    encode_setpoint,
    read_back_matches,
    read_targets,
    split_read,
)
from derim.adapters.iec61850.profile import ControlPoint, Profile
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandResult
from derim.models.telemetry import TELEMETRY_BY_DEVICE_TYPE, DERTelemetry

log = logging.getLogger(__name__)

READ_BACK_READS = 5
"""Reads of a setpoint's value after it was sent, spread over ``timeout_s``, before the
command counts as not carried out."""


class Iec61850Adapter(PollingAdapter):
    """One IED (named ``ied_name`` in its SCL) reached over MMS, described by a profile."""

    protocol = "iec61850"

    def __init__(
        self,
        device_id: str,
        profile: Profile,
        link: MmsLink,
        ied_name: str,
        settings: PollSettings | None = None,
    ) -> None:
        super().__init__(device_id, settings)
        self.profile = profile
        self.link = link
        self.ied_name = ied_name
        self._targets = [(self._full(ref), fc) for ref, fc in read_targets(profile)]
        self._telemetry = TELEMETRY_BY_DEVICE_TYPE[profile.device_type]
        self._reported: set[str] = set()
        """Point problems already logged as a warning (later ones go to debug)."""

    def _full(self, ref: str) -> str:
        """``ref`` with the IED name in front: the MMS domain is IED name + LD instance."""
        return f"{self.ied_name}{ref}"

    async def connect(self) -> None:
        """Open the MMS association."""
        await self.link.connect()

    async def disconnect(self) -> None:
        """Drop the association so the next poll opens a fresh one."""
        await self.link.close()

    async def read_once(self) -> Sequence[DERTelemetry]:
        """Read every point and its quality in one MMS Read and decode one canonical reading.

        A point the IED refuses, whose quality is invalid or whose enum ordinal is unmapped is
        left out (or unknown) and flags the reading ``questionable`` (the device shows as
        degraded) instead of failing the poll.
        """
        values, qualities = split_read(self.profile, await self.link.read(self._targets))
        decoded = decode_reading(self.profile, values, qualities)
        self._report(decoded.problems)
        fields: dict[str, object] = dict(decoded.fields)
        fields["quality"] = decoded.quality
        return [canonical_reading(self._telemetry, self.device_id, fields)]

    def _report(self, problems: dict[str, str]) -> None:
        """Log each point's first problem of a kind as a warning, repeats at debug."""
        for name, why in problems.items():
            key = f"{name}: {why}"
            first = key not in self._reported
            self._reported.add(key)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "device %s: point %s left out of the reading (%s)",
                self.device_id,
                name,
                why,
            )

    def check(self, command: CommandRequest) -> tuple[ControlPoint, float | int | bool]:
        """The setpoint and value ``command`` would write; ``InvalidRequestError`` if no
        setpoint carries it out, the unit is wrong or the value is outside the limits."""
        control = self._control(command)
        value = requested_value(command, control.name, control.unit, control.choices is not None)
        return control, encode_setpoint(control, value)

    def validate(self, command: CommandRequest) -> None:
        """Check that a setpoint carries out ``command`` within its limits."""
        self.check(command)

    async def send(self, command: CommandRequest) -> CommandResult:
        """Write (or operate) the command's setpoint, then read it back.

        Acknowledged once the IED holds the value sent (within the setpoint's tolerance); a
        write or operation the IED refuses raises ``DeviceRejected``; one it accepts but does
        not carry out within ``timeout_s`` gives a failed result naming both values.
        """
        control, written = self.check(command)
        ref = self._full(control.ref)
        if control.read_back is None:
            await self.link.write(ref, written)
            echo = (ref, "SP")
        else:
            await self.link.operate(ref, control.control_model, written)
            echo = (self._full(control.read_back), control.read_back_fc)
        echoed, matched = await self._read_back(control, written, echo)
        if not matched:
            shown = echoed.error if isinstance(echoed, AccessFailure) else repr(echoed)
            message = f"{control.name}: sent {written!r}, IED reads back {shown}"
            return read_back_result(self.device_id, command, False, message)
        return read_back_result(self.device_id, command, True, f"{control.name} set and read back")

    async def _read_back(
        self, control: ControlPoint, written: float | int | bool, echo: tuple[str, str]
    ) -> tuple[object, bool]:
        """The value at ``echo`` and whether it matches ``written``: the first match, else the
        last value read by the end of ``timeout_s``. An IED may update a measured value
        (``mxVal``) some time after the operation, so it is read up to ``READ_BACK_READS``
        times, evenly spaced."""
        loop = asyncio.get_running_loop()
        pause = self.settings.timeout_s / (READ_BACK_READS - 1)
        deadline = loop.time() + self.settings.timeout_s
        while True:
            (echoed,) = await self.link.read([echo])
            if not isinstance(echoed, AccessFailure) and read_back_matches(
                control, written, echoed
            ):
                return echoed, True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return echoed, False
            await asyncio.sleep(min(pause, remaining))

    def _control(self, command: CommandRequest) -> ControlPoint:
        name = command.parameters.get("point")
        for control in self.profile.controls:
            if control.name == name or (name is None and command.command in control.commands):
                return control
        known = ", ".join(
            f"{c.name} ({', '.join(c.commands) or '-'})" for c in self.profile.controls
        )
        raise InvalidRequestError(
            "command", f"no setpoint carries out {command.command.value} (known: {known or '-'})"
        )

    async def release(self) -> None:
        """Nothing to undo: the adapter keeps no control active on its own."""
