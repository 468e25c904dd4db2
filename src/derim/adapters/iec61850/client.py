"""The MMS connection to one IED, over the ``iec61850`` client: the one place where that
library's exceptions become DERIM's.

- connect refused, timeouts, a dropped association (``IedConnectionError``,
  ``IedTimeoutError``, ``IedServiceError``: the latter is also what a dead session raises)
  -> ``TransportError``: the poll counts as offline and the connection is rebuilt;
- ``IedDataAccessError`` to a write (the IED's ``DataAccessError``, such as
  ``ObjectValueInvalid`` or ``ObjectAccessDenied``), ``IedControlError`` or a negative
  control outcome (with its AddCause) -> ``DeviceRejected``;
- anything else the library raises -> ``ProtocolError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import iec61850

from derim.adapters.iec61850.decode import AccessFailure
from derim.errors import DeviceRejected, ProtocolError, TransportError

log = logging.getLogger(__name__)

MAX_TARGETS_PER_READ = 32
"""Attributes asked for in one MMS Read, so a large profile stays within the PDU size."""

REMOTE_CONTROL = 3
"""``orCat`` of DERIM's control operations: remote-control (IEC 61850-7-3 orCategory)."""
ORIGIN = b"DERIM"
"""``orIdent`` of DERIM's control operations."""

_TRANSPORT_ERRORS = (
    iec61850.IedConnectionError,
    iec61850.IedTimeoutError,
    iec61850.IedServiceError,
    OSError,
)


class MmsLink:
    """One MMS association with an IED at ``host:port``, reopened by ``connect`` after a
    failure. References given to it are complete (``<IED><LD>/<LN>.<DO>.<DA>``)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout_ms = max(1, round(timeout_s * 1000))
        self._connection: iec61850.IedConnection | None = None

    async def connect(self) -> None:
        """Open the association (drop any earlier one first)."""
        await self.close()
        with _translated(f"connect to {self.address}"):
            self._connection = await iec61850.IedConnection.connect(
                self.address, timeout_ms=self.timeout_ms, request_timeout_ms=self.timeout_ms
            )

    async def close(self) -> None:
        """Drop the association without the MMS Conclude exchange (the peer may be gone)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.abort()
        except (iec61850.IedError, OSError) as exc:  # the association is dropped either way
            log.debug("closing the association with %s: %s", self.address, exc)

    async def read(self, targets: Sequence[tuple[str, str]]) -> list[object]:
        """The values of ``targets`` (reference, FC) in order; an attribute the IED refuses
        comes back as an ``AccessFailure`` in its place."""
        connection = self._open()
        values: list[object] = []
        for start in range(0, len(targets), MAX_TARGETS_PER_READ):
            chunk = [
                (ref, iec61850.FC(fc)) for ref, fc in targets[start : start + MAX_TARGETS_PER_READ]
            ]
            with _translated("read"):
                answer = await connection.read_multiple(chunk, strict=False)
            values += [
                AccessFailure(v.error) if isinstance(v, iec61850.DataAccessFailure) else v
                for v in answer
            ]
        return values

    async def write(self, ref: str, value: float | int | bool) -> None:
        """Write a setpoint (FC ``SP``); ``DeviceRejected`` when the IED refuses it."""
        connection = self._open()
        with _translated(f"write {ref}"):
            await connection.write(ref, iec61850.FC.SP, value)

    async def operate(self, ref: str, control_model: str, value: float | int | bool) -> None:
        """Operate the controllable data object ``ref`` (APC, INC, SPC) with ``value`` as
        ``ctlVal``; ``DeviceRejected`` naming the IED's AddCause when it refuses."""
        connection = self._open()
        with _translated(f"operate {ref}"):
            control = connection.create_control_object(ref, iec61850.ControlModel(control_model))
            control.set_origin(iec61850.OriginValue(or_cat=REMOTE_CONTROL, or_ident=ORIGIN))
            outcome = await control.operate(value)
        if not outcome.success:
            cause = outcome.add_cause or "no cause given"
            raise DeviceRejected(f"operate {ref}: refused by the IED ({cause})")

    def _open(self) -> iec61850.IedConnection:
        if self._connection is None:
            raise TransportError(f"not connected to {self.address}")
        return self._connection


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn the library's exceptions raised while doing ``action`` into DERIM's."""
    try:
        yield
    except (iec61850.IedDataAccessError, iec61850.IedControlError) as exc:
        raise DeviceRejected(f"{action}: refused by the IED: {exc}") from exc
    except _TRANSPORT_ERRORS as exc:
        raise TransportError(f"{action}: {exc}") from exc
    except (iec61850.IedError, ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"{action}: {exc}") from exc
