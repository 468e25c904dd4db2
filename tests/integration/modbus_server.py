"""One simulated Modbus unit on its own server, for adapter tests (``derim.sim`` does the work)."""

from __future__ import annotations

from collections.abc import Sequence

from pymodbus.constants import ExcCodes

from derim.sim.server import SimServer, SimUnit


class RegisterServer(SimServer):
    """A server with a single unit whose registers, exceptions and request log tests reach."""

    def __init__(self, unit_id: int = 1, size: int = 256) -> None:
        self.unit = SimUnit(unit_id, size)
        super().__init__([self.unit])

    def set(self, address: int, registers: Sequence[int]) -> None:
        """Hold ``registers`` from ``address`` on, from the next request."""
        self.unit.set(address, registers)

    @property
    def exception(self) -> ExcCodes | None:
        """The exception every request gets, or None."""
        return self.unit.exception

    @exception.setter
    def exception(self, code: ExcCodes | None) -> None:
        self.unit.exception = code

    @property
    def reads(self) -> list[tuple[int, int]]:
        """(address, count) of every read served."""
        return self.unit.reads

    @property
    def writes(self) -> list[tuple[int, list[int]]]:
        """(address, registers) of every write served."""
        return self.unit.writes

    async def start(self) -> RegisterServer:
        """Listen (on the same port again after a stop)."""
        await super().start()
        return self
