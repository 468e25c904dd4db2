"""The durable write path: spool while the backend is down, replay in order when it returns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from derim.errors import StorageError, StorageUnavailableError
from derim.models import BatteryTelemetry, DERTelemetry
from derim.storage.durable import DurableWriter
from derim.storage.spool import Spool, decode_batch, encode_batch

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FlakyStore:
    """A store double at the transport seam: up or down on demand, remembers writes."""

    name = "flaky"

    def __init__(self) -> None:
        self.up = True
        self.broken = False
        self.rows: list[DERTelemetry] = []

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        if self.broken:
            raise StorageError("constraint violated")
        if not self.up:
            raise StorageUnavailableError("connection refused")
        self.rows.extend(records)


def batch(start: int, n: int = 3) -> list[DERTelemetry]:
    return [
        DERTelemetry(device_id="d", timestamp=T0 + timedelta(seconds=start + i), power_kw=i)
        for i in range(n)
    ]


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool.db")
    await s.open()
    return s


async def test_outage_spools_then_replays_in_order(spool: Spool) -> None:
    """Batches written during an outage are stored later, in publication order."""
    store = FlakyStore()
    writer = DurableWriter(store, spool)
    await writer.write(batch(0))
    store.up = False
    await writer.write(batch(10))
    await writer.write(batch(20))
    assert spool.depth == 6
    store.up = True
    await writer.write(batch(30))
    assert spool.depth == 9, "while the spool holds data, new batches queue behind it"
    while await writer.replay_once():
        pass
    assert spool.depth == 0
    seconds = [int((r.timestamp - T0).total_seconds()) for r in store.rows]
    assert seconds == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32]
    assert (writer.counters.stored, writer.counters.spooled, writer.counters.replayed) == (3, 9, 9)
    await spool.close()


async def test_spool_survives_a_restart(tmp_path: Path) -> None:
    """What is spooled is still there after the process restarts."""
    first = Spool(tmp_path / "s.db")
    await first.open()
    await first.append(batch(0, 5))
    await first.close()
    second = Spool(tmp_path / "s.db")
    await second.open()
    assert second.depth == 5
    head = await second.peek()
    assert head is not None
    assert len(head[1]) == 5
    await second.close()


async def test_replay_stops_while_still_down(spool: Spool) -> None:
    """Replay keeps the batch when the backend is still unreachable."""
    store = FlakyStore()
    store.up = False
    writer = DurableWriter(store, spool)
    await writer.write(batch(0))
    assert not await writer.replay_once()
    assert spool.depth == 3
    await spool.close()


async def test_non_transient_errors_are_raised_not_spooled(spool: Spool) -> None:
    """A bad batch is reported to the caller instead of looping in the spool forever."""
    store = FlakyStore()
    store.broken = True
    writer = DurableWriter(store, spool)
    with pytest.raises(StorageError, match="constraint"):
        await writer.write(batch(0))
    assert spool.depth == 0
    await spool.close()


def test_spool_encoding_keeps_class_and_set_fields() -> None:
    """A spooled batch decodes to equal records of the same classes."""
    records = [BatteryTelemetry(device_id="b", timestamp=T0, soc_percent=5), *batch(1, 1)]
    assert decode_batch(encode_batch(records)) == records
