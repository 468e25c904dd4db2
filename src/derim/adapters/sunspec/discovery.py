"""Pure SunSpec discovery: the 'SunS' marker at a base address, then the chain of model headers.

Discovery is written as data and small steps so the I/O layer can drive it with async reads:

    for base in BASE_ADDRESSES:          # read 2 registers at each base until is_marker() holds
        ...
    walker = ChainWalker(base)
    while walker.next_address is not None:
        walker.feed(await read(walker.next_address, HEADER_SIZE))
    walker.models                        # [ModelEntry(model_id, address, length), ...]

``find_base`` and ``walk_models`` run the same steps over a synchronous reader or a register
mapping (tests, simulators, captured images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from derim.adapters.sunspec.models import HEADER_SIZE
from derim.errors import ProtocolError

BASE_ADDRESSES: tuple[int, ...] = (40000, 0, 50000)
"""Where the SunSpec map may start, most common first (protocol, 0-based register addresses)."""

MARKER: tuple[int, int] = (0x5375, 0x6E53)
"""The two registers holding ASCII 'SunS' at the base address."""

END_MODEL_ID = 0xFFFF
"""Model id of the header that ends the chain."""

MAX_MODELS = 256
"""Most models accepted in one chain; more means the device loops or returns garbage."""

ADDRESS_SPACE = 0x10000
"""Number of holding-register addresses; no model may run past the last one."""


class ModelEntry(NamedTuple):
    """One model in the device's map: id, address of its ``ID`` register and its ``L`` value."""

    model_id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """Address just past the model's last register."""
        return self.address + HEADER_SIZE + self.length


def is_marker(registers: Sequence[int] | None) -> bool:
    """Whether ``registers`` (two registers read at a candidate base, or None) read 'SunS'."""
    return registers is not None and tuple(registers) == MARKER


def find_base(read_marker: Callable[[int], Sequence[int] | None]) -> int:
    """The first of ``BASE_ADDRESSES`` where ``read_marker(base)`` returns the 'SunS' marker.

    ``read_marker`` returns the two registers at ``base``, or None when the read failed. Raises
    ``ProtocolError`` when no candidate holds the marker.
    """
    for base in BASE_ADDRESSES:
        if is_marker(read_marker(base)):
            return base
    raise ProtocolError(f"no SunSpec marker 'SunS' at any of {list(BASE_ADDRESSES)}")


class ChainWalker:
    """Follows model headers from ``base + 2`` to the end marker, one header at a time."""

    def __init__(self, base: int) -> None:
        """Start a walk for a map whose 'SunS' marker is at ``base``."""
        self.models: list[ModelEntry] = []
        self.next_address: int | None = base + len(MARKER)
        """Address of the next header to read; None once the end marker was seen."""

    def feed(self, header: Sequence[int]) -> int | None:
        """Take the two registers read at ``next_address``; return the next address or None.

        Raises ``ProtocolError`` for a malformed header, a model id of 0, a zero-length model, a
        model running past the register space or more than ``MAX_MODELS`` models.
        """
        address = self.next_address
        if address is None:
            raise ProtocolError("the model chain has already ended")
        if len(header) != HEADER_SIZE or not all(0 <= r <= 0xFFFF for r in header):
            raise ProtocolError(f"bad model header at {address}: {list(header)}")
        model_id, length = header
        if model_id == END_MODEL_ID:
            self.next_address = None
            return None
        if model_id == 0:
            raise ProtocolError(f"no model id at {address}: unknown data after the last model")
        if length == 0:
            raise ProtocolError(f"model {model_id} at {address} has length 0")
        entry = ModelEntry(model_id, address, length)
        if entry.end + HEADER_SIZE > ADDRESS_SPACE:
            raise ProtocolError(f"model {model_id} at {address} (length {length}) runs past 65535")
        if len(self.models) >= MAX_MODELS:
            raise ProtocolError(f"more than {MAX_MODELS} models without an end marker")
        self.models.append(entry)
        self.next_address = entry.end
        return entry.end


def walk_models(
    registers_at: Callable[[int, int], Sequence[int]] | Mapping[int, int], base: int
) -> list[ModelEntry]:
    """The model map of a device whose 'SunS' marker is at ``base``.

    ``registers_at`` is either ``read(address, count) -> registers`` or a mapping from address to
    register value. Raises ``ProtocolError`` on a broken chain or a header the mapping lacks.
    """
    walker = ChainWalker(base)
    while walker.next_address is not None:
        address = walker.next_address
        if isinstance(registers_at, Mapping):
            try:
                header = [registers_at[address + i] for i in range(HEADER_SIZE)]
            except KeyError as exc:
                raise ProtocolError(f"the register image lacks the header at {address}") from exc
            walker.feed(header)
        else:
            walker.feed(registers_at(address, HEADER_SIZE))
    return walker.models
