"""InfluxStore against a real influxd: round trips, escaping, paging, downsampling, spooling."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from influxd import InfluxServer

from derim.errors import StorageError, StorageUnavailableError
from derim.models.telemetry import (
    BatteryTelemetry,
    DERTelemetry,
    EVChargerTelemetry,
    MeterTelemetry,
    SolarTelemetry,
)
from derim.storage.base import (
    Aggregation,
    Interval,
    Order,
    TelemetryQuery,
    decode_cursor,
)
from derim.storage.durable import DurableWriter
from derim.storage.influx import InfluxStore
from derim.storage.spool import Spool
from derim.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2024, 3, 1, tzinfo=UTC)
T0_MS = (T0 - EPOCH) // timedelta(milliseconds=1)
HOUR_MS = 3_600_000


def at(ms: int) -> datetime:
    """The UTC instant ``ms`` milliseconds after the epoch."""
    return EPOCH + timedelta(milliseconds=ms)


def iso(ms: int) -> str:
    """The timestamp string the store returns for epoch milliseconds."""
    return at(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def new_database() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


async def influxql(server: InfluxServer, statement: str, database: str = "") -> Any:
    """Run InfluxQL directly (outside the store), for setup and checks."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/query", data={"q": statement, "db": database, "epoch": "ms"})
    response.raise_for_status()
    return response.json()["results"][0]


@pytest.fixture
async def store(influxd: InfluxServer) -> AsyncIterator[InfluxStore]:
    """An opened store on a fresh database, dropped afterwards."""
    store = InfluxStore(influxd.url, new_database(), timeout_s=5.0)
    await store.open()
    yield store
    await store.close()
    if influxd.running:
        await influxql(influxd, f'DROP DATABASE "{store.database}"')


async def rows(store: InfluxStore | SQLiteStore, **query: Any) -> list[dict[str, Any]]:
    """One page of a query, decoded."""
    page = await store.query(TelemetryQuery(**query))
    records: list[dict[str, Any]] = orjson.loads(page.records_json)
    assert page.count == len(records)
    return records


async def all_pages(store: InfluxStore | SQLiteStore, **query: Any) -> list[list[dict[str, Any]]]:
    """Every page of a query, following cursors until there are no more."""
    pages: list[list[dict[str, Any]]] = []
    after: int | None = None
    while True:
        page = await store.query(TelemetryQuery(**query, after_ms=after))
        pages.append(orjson.loads(page.records_json))
        assert len(pages[-1]) <= query["limit"]
        if page.next_cursor is None:
            return pages
        assert len(pages[-1]) == query["limit"]
        after = decode_cursor(page.next_cursor)
        assert len(pages) < 1_000


def expected_row(record: DERTelemetry) -> dict[str, Any]:
    """What a default query should return for ``record``: its set fields and an ISO timestamp."""
    data = record.model_dump(mode="json", exclude={"device_id"})
    data["timestamp"] = iso((record.timestamp - EPOCH) // timedelta(milliseconds=1))
    return {k: v for k, v in data.items() if v is not None}


def meter(device_id: str, ms: int, power_kw: float) -> MeterTelemetry:
    """A meter reading with a few fields derived from ``power_kw``."""
    return MeterTelemetry(
        device_id=device_id,
        timestamp=at(ms),
        power_kw=power_kw,
        voltage_v=230.0 + power_kw / 10,
        energy_import_kwh=abs(power_kw) * 3,
    )


async def test_round_trip_keeps_every_field_type_and_the_utc_instant(store: InfluxStore) -> None:
    """Floats, integers, enums and free text come back unchanged; offsets become the UTC instant."""
    records: list[DERTelemetry] = [
        SolarTelemetry(
            device_id="pv-1",
            timestamp="2024-03-01T02:00:00.123+02:00",
            power_kw=4.25,
            reactive_power_kvar=-0.5,
            voltage_v=230.1,
            current_a=18.5,
            frequency_hz=50.01,
            energy_kwh=12345.678,
            state="on",
            irradiance_w_m2=812.0,
            panel_temperature_c=-3.5,
            dc_power_kw=4.4,
        ),
        BatteryTelemetry(
            device_id="bat-1",
            timestamp="2024-02-29T19:00:01-05:00",
            power_kw=-2.0,
            soc_percent=55.5,
            soh_percent=98.0,
            charge_rate_kw=3.3,
            temperature_c=21.0,
            state="charging",
            quality="questionable",
        ),
        EVChargerTelemetry(
            device_id="ev-1",
            timestamp=T0 + timedelta(seconds=2),
            power_kw=-7.2,
            connector_id=2,
            connector_status="charging",
            session_energy_kwh=1.25,
            transaction_id="tx-42",
        ),
        MeterTelemetry(
            device_id="m-1",
            timestamp=T0 + timedelta(seconds=3),
            power_kw=1e-7,
            energy_import_kwh=1.5e11,
            energy_export_kwh=0.0,
            power_factor=-0.95,
        ),
    ]
    await store.write(records)
    assert records[0].timestamp == T0 + timedelta(milliseconds=123)
    for record in records:
        found = await rows(store, device_id=record.device_id, start_ms=T0_MS, end_ms=T0_MS + 10_000)
        assert found == [expected_row(record)]
    typed = await rows(
        store,
        device_id="ev-1",
        start_ms=T0_MS,
        end_ms=T0_MS + 10_000,
        fields=("connector_id", "transaction_id", "soc_percent"),
    )
    assert typed == [
        {
            "timestamp": iso(T0_MS + 2000),
            "connector_id": 2,
            "transaction_id": "tx-42",
            "soc_percent": None,
        }
    ]
    assert isinstance(typed[0]["connector_id"], int)


async def test_string_fields_and_tag_values_are_escaped(store: InfluxStore) -> None:
    """Quotes, backslashes, commas, spaces and newlines survive in strings; tag specials in ids."""
    tricky = 'tx "quoted" \\ back\\slash, a=b\nline2 \\"'
    plain = EVChargerTelemetry(device_id="ev-1", timestamp=T0, transaction_id=tricky)
    odd_id = EVChargerTelemetry.model_construct(
        device_id="a,b=c d", timestamp=T0, transaction_id="x", power_kw=1.5
    )
    await store.write([plain, odd_id])
    found = await rows(store, device_id="ev-1", start_ms=T0_MS, end_ms=T0_MS + 1)
    assert found[0]["transaction_id"] == tricky
    found = await rows(store, device_id="a,b=c d", start_ms=T0_MS, end_ms=T0_MS + 1)
    assert found == [
        {"timestamp": iso(T0_MS), "power_kw": 1.5, "quality": "good", "transaction_id": "x"}
    ]
    assert (await store.latest(["a,b=c d"]))["a,b=c d"]["power_kw"] == 1.5


async def test_tag_values_influxdb_cannot_represent_are_refused(store: InfluxStore) -> None:
    """A device id with a backslash raises StorageError instead of being stored under another id."""
    bad = MeterTelemetry.model_construct(device_id="a\\", timestamp=T0, power_kw=1.0)
    with pytest.raises(StorageError, match="cannot be stored"):
        await store.write([bad])


async def test_device_id_injection_matches_nothing(store: InfluxStore) -> None:
    """Hostile device ids are bound parameters: they match no series and change nothing."""
    await store.write([meter("m-1", T0_MS, 1.0), meter("m-2", T0_MS, 2.0)])
    hostile = [
        "x' OR 1=1 --",
        'm-1" OR "device_id" =~ /.*/ --',
        "m-1' OR device_id =~ /.*/",
        "$device_id",
        'x"; DROP DATABASE "derim"; --',
        "m-1\\",
    ]
    for device_id in hostile:
        assert await rows(store, device_id=device_id, start_ms=T0_MS, end_ms=T0_MS + 1) == []
        assert await store.latest([device_id]) == {}
        await store.delete_device(device_id)
    assert set(await store.latest(["m-1", "m-2"])) == {"m-1", "m-2"}


async def test_pages_return_every_row_once_in_both_orders(store: InfluxStore) -> None:
    """Cursor paging covers [start, end) exactly once, ASC and DESC, newest row included."""
    rng = random.Random(7)
    start, end = T0_MS, T0_MS + 600_000
    times = [*sorted(rng.sample(range(start, end - 1), 233)), end - 1]
    outside = [start - 1, end]
    await store.write([meter("m-1", ms, float(i)) for i, ms in enumerate(times + outside)])
    await store.write([meter("m-2", ms, 9.0) for ms in times[:50]])
    window = {"device_id": "m-1", "start_ms": start, "end_ms": end, "fields": ("power_kw",)}
    for order, expected in ((Order.ASC, times), (Order.DESC, times[::-1])):
        for limit in (1, 40, 234, 1000):
            pages = await all_pages(store, **window, limit=limit, order=order)
            got = [row["timestamp"] for page in pages for row in page]
            assert got == [iso(ms) for ms in expected], (order, limit)
            assert len(pages) == max(1, -(-len(times) // limit))


async def test_pages_match_the_sqlite_backend(store: InfluxStore, tmp_path: Path) -> None:
    """The same data and queries give the same pages and cursors as SQLite, raw and downsampled."""
    sqlite = SQLiteStore(tmp_path / "ref.db")
    await sqlite.open()
    rng = random.Random(11)
    records = [
        meter("m-1", T0_MS + ms, round(rng.uniform(-5, 5), 3))
        for ms in sorted(rng.sample(range(0, 3 * HOUR_MS), 400))
    ]
    await store.write(records)
    await sqlite.write(records)
    fields = ("power_kw", "voltage_v", "energy_import_kwh")
    queries: list[dict[str, Any]] = [
        {"limit": 37, "order": Order.ASC},
        {"limit": 37, "order": Order.DESC},
        {"limit": 5, "order": Order.ASC, "every": Interval.QUARTER_HOUR, "agg": Aggregation.MAX},
        {"limit": 5, "order": Order.DESC, "every": Interval.MINUTE, "agg": Aggregation.SUM},
    ]
    try:
        for extra in queries:
            query = {
                "device_id": "m-1",
                "start_ms": T0_MS + 123_456,
                "end_ms": T0_MS + 2 * HOUR_MS + 7,
                "fields": fields,
                **extra,
            }
            mine, theirs = await all_pages(store, **query), await all_pages(sqlite, **query)
            assert [len(p) for p in mine] == [len(p) for p in theirs], extra
            for a, b in zip(mine, theirs, strict=True):
                assert a == [approx_row(row) for row in b], extra
    finally:
        await sqlite.close()


def approx_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its numbers compared approximately."""
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()}


def bucket_values(
    readings: list[tuple[int, float]], width: int, agg: Aggregation
) -> dict[int, float]:
    """Aggregate ``(ms, value)`` readings into UTC-aligned buckets the way the store should."""
    buckets: dict[int, list[tuple[int, float]]] = {}
    for ms, value in readings:
        buckets.setdefault(ms - ms % width, []).append((ms, value))
    combine: dict[Aggregation, Callable[[list[float]], float]] = {
        Aggregation.MEAN: lambda v: sum(v) / len(v),
        Aggregation.MIN: min,
        Aggregation.MAX: max,
        Aggregation.LAST: lambda v: v[-1],
        Aggregation.SUM: sum,
    }
    return {b: combine[agg]([v for _, v in sorted(items)]) for b, items in buckets.items()}


@pytest.mark.parametrize("agg", list(Aggregation))
async def test_downsampling_matches_values_computed_in_python(
    store: InfluxStore, agg: Aggregation
) -> None:
    """Each aggregation per UTC-aligned bucket equals Python's; empty buckets are left out."""
    rng = random.Random(agg.value)
    readings = [
        (T0_MS + ms, round(rng.uniform(-10, 10), 2))
        for ms in rng.sample(range(0, 2 * HOUR_MS), 300)
        if not HOUR_MS <= ms < HOUR_MS + 20 * 60_000  # a 20-minute gap
    ]
    await store.write([meter("m-1", ms, value) for ms, value in readings])
    for every in (Interval.MINUTE, Interval.QUARTER_HOUR, Interval.HOUR):
        expected = bucket_values(readings, every.milliseconds, agg)
        page = await rows(
            store,
            device_id="m-1",
            start_ms=T0_MS,
            end_ms=T0_MS + 2 * HOUR_MS,
            every=every,
            agg=agg,
            fields=("power_kw",),
        )
        got = {row["timestamp"]: row["power_kw"] for row in page}
        assert got == {iso(b): pytest.approx(v) for b, v in sorted(expected.items())}, every


async def test_downsampling_defaults_to_float_fields_with_data(store: InfluxStore) -> None:
    """Without fields, a downsampled page has the real-valued fields with data, and no others."""
    await store.write(
        [
            EVChargerTelemetry(
                device_id="ev-1",
                timestamp=at(T0_MS + i * 1000),
                power_kw=-float(i),
                connector_id=1,
                transaction_id="t",
            )
            for i in range(120)
        ]
    )
    page = await rows(
        store,
        device_id="ev-1",
        start_ms=T0_MS,
        end_ms=T0_MS + HOUR_MS,
        every=Interval.MINUTE,
        agg=Aggregation.MIN,
    )
    assert page == [
        {"timestamp": iso(T0_MS), "power_kw": -59.0},
        {"timestamp": iso(T0_MS + 60_000), "power_kw": -119.0},
    ]


async def test_latest_returns_the_newest_record_per_device(store: InfluxStore) -> None:
    """latest() gives each device's newest reading as typed values with an aware UTC timestamp."""
    await store.write([meter("m-1", T0_MS + i, float(i)) for i in range(5)])
    await store.write(
        [BatteryTelemetry(device_id="bat-1", timestamp=T0, soc_percent=40.0, state="idle")]
    )
    devices = [f"dev-{i}" for i in range(150)] + ["m-1", "bat-1", "m-1", "nobody"]
    latest = await store.latest(devices)
    assert set(latest) == {"m-1", "bat-1"}
    assert latest["m-1"] == {
        "timestamp": at(T0_MS + 4),
        "power_kw": 4.0,
        "voltage_v": 230.4,
        "energy_import_kwh": 12.0,
        "quality": "good",
    }
    assert latest["bat-1"] == {
        "timestamp": T0,
        "soc_percent": 40.0,
        "state": "idle",
        "quality": "good",
    }
    assert isinstance(latest["m-1"]["power_kw"], float)
    assert await store.latest([]) == {}


async def test_delete_device_drops_only_that_device(store: InfluxStore) -> None:
    """delete_device removes every reading of one device and leaves the others alone."""
    await store.write([meter(d, T0_MS + i, 1.0) for d in ("m-1", "m-2") for i in range(10)])
    await store.delete_device("m-1")
    assert await rows(store, device_id="m-1", start_ms=T0_MS, end_ms=T0_MS + 10) == []
    assert len(await rows(store, device_id="m-2", start_ms=T0_MS, end_ms=T0_MS + 10)) == 10


async def test_apply_retention_deletes_only_older_readings(store: InfluxStore) -> None:
    """apply_retention deletes readings strictly older than the cut-off, for every device."""
    await store.write([meter(d, T0_MS + i * 1000, 1.0) for d in ("m-1", "m-2") for i in range(10)])
    await store.apply_retention(T0_MS + 5000)
    for device_id in ("m-1", "m-2"):
        kept = await rows(store, device_id=device_id, start_ms=T0_MS, end_ms=T0_MS + 60_000)
        assert [r["timestamp"] for r in kept] == [iso(T0_MS + i * 1000) for i in range(5, 10)]


async def test_large_write_is_chunked_and_complete(
    store: InfluxStore, influxd: InfluxServer
) -> None:
    """A write of several chunks sent concurrently stores every record."""
    records = [meter(f"m-{i % 7}", T0_MS + i, float(i)) for i in range(23_456)]
    await store.write(records)
    counted = await influxql(influxd, 'SELECT count("power_kw") FROM "telemetry"', store.database)
    assert counted["series"][0]["values"][0][1] == len(records)


async def test_client_errors_raise_storage_error_with_influx_message(
    store: InfluxStore, influxd: InfluxServer
) -> None:
    """A field type conflict is a StorageError carrying InfluxDB's reason, not 'unavailable'.

    Field types are fixed per shard in InfluxDB 1.x, so the conflicting point shares T0's shard.
    """
    await store.write([EVChargerTelemetry(device_id="ev-1", timestamp=T0, connector_id=1)])
    async with httpx.AsyncClient(base_url=influxd.url) as client:
        await client.post(
            "/write",
            params={"db": store.database, "precision": "ms"},
            content=f'telemetry,device_id=x power_kw="text" {T0_MS}'.encode(),
        )
    with pytest.raises(StorageError, match="field type conflict") as caught:
        await store.write([meter("m-1", T0_MS, 1.0)])
    assert not isinstance(caught.value, StorageUnavailableError)
    huge = EVChargerTelemetry(device_id="ev-1", timestamp=T0, connector_id=2**64)
    with pytest.raises(StorageError, match="cannot encode"):
        await store.write([huge])


async def test_dropped_database_is_created_again_on_write(
    store: InfluxStore, influxd: InfluxServer
) -> None:
    """If the database disappears while running, the next write recreates it and succeeds."""
    await store.write([meter("m-1", T0_MS, 1.0)])
    await influxql(influxd, f'DROP DATABASE "{store.database}"')
    await store.write([meter("m-1", T0_MS + 1, 2.0)])
    assert [
        r["power_kw"] for r in await rows(store, device_id="m-1", start_ms=0, end_ms=T0_MS + 2)
    ] == [2.0]


async def test_retention_days_sets_the_default_policy(influxd: InfluxServer) -> None:
    """retention_days creates a default retention policy of that length and updates it on reopen."""
    database = new_database()
    for days, duration, shards in ((2, "48h0m0s", "24h0m0s"), (0.5, "12h0m0s", "1h0m0s")):
        store = InfluxStore(influxd.url, database, retention_days=days)
        await store.open()
        await store.close()
        policies = await influxql(influxd, f'SHOW RETENTION POLICIES ON "{database}"')
        by_name = {row[0]: row for row in policies["series"][0]["values"]}
        assert by_name["derim"][1:3] == [duration, shards]
        assert by_name["derim"][4] is True
    await influxql(influxd, f'DROP DATABASE "{database}"')


async def test_writes_spool_while_influxd_is_down_and_replay_in_order(
    influxd: InfluxServer, tmp_path: Path
) -> None:
    """While influxd is down batches spool; after a restart they replay in order, none lost."""
    store = InfluxStore(influxd.url, new_database(), timeout_s=2.0)
    await store.open()
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    writer = DurableWriter(store, spool)
    batches = [
        [meter("m-1", T0_MS + b * 100 + i, float(b * 100 + i)) for i in range(100)]
        for b in range(5)
    ]
    try:
        await writer.write(batches[0])
        assert writer.counters.stored == 100
        influxd.stop()
        try:
            assert not (await store.health()).reachable
            for n, batch in enumerate(batches[1:], start=1):
                await writer.write(batch)
                assert spool.depth == n * 100
        finally:
            influxd.start()
        health = await store.health()
        assert (health.backend, health.reachable) == ("influxdb", True)
        for _ in batches[1:]:
            assert await writer.replay_once()
        assert not await writer.replay_once()
        assert (spool.depth, writer.counters.replayed) == (0, 400)
        stored = await rows(store, device_id="m-1", start_ms=T0_MS, end_ms=T0_MS + 500, limit=1000)
        assert [r["power_kw"] for r in stored] == [float(i) for i in range(500)]
    finally:
        await spool.close()
        await store.close()
        await influxql(influxd, f'DROP DATABASE "{store.database}"')


async def test_open_while_down_creates_the_database_on_first_contact(
    influxd: InfluxServer,
) -> None:
    """open() reports an unreachable server; the first write once it is back creates the db."""
    store = InfluxStore(influxd.url, new_database(), timeout_s=2.0)
    influxd.stop()
    try:
        with pytest.raises(StorageUnavailableError):
            await store.open()
        with pytest.raises(StorageUnavailableError):
            await store.write([meter("m-1", T0_MS, 1.0)])
    finally:
        influxd.start()
    try:
        await store.write([meter("m-1", T0_MS, 1.0)])
        assert len(await rows(store, device_id="m-1", start_ms=T0_MS, end_ms=T0_MS + 1)) == 1
    finally:
        await store.close()
        await influxql(influxd, f'DROP DATABASE "{store.database}"')


async def test_records_without_a_field_common_to_all_still_encode(store: InfluxStore) -> None:
    """A chunk with no field set in every record (unvalidated models only) still round-trips."""
    unset: Any = None  # quality is never None in a validated model
    records = [
        MeterTelemetry.model_construct(
            device_id="m-1", timestamp=at(T0_MS), quality=unset, power_kw=1.0
        ),
        MeterTelemetry.model_construct(
            device_id="m-1", timestamp=at(T0_MS + 1), quality=unset, voltage_v=2.0
        ),
    ]
    await store.write(records)
    found = await rows(store, device_id="m-1", start_ms=T0_MS, end_ms=T0_MS + 2)
    assert found == [
        {"timestamp": iso(T0_MS), "power_kw": 1.0, "voltage_v": None},
        {"timestamp": iso(T0_MS + 1), "power_kw": None, "voltage_v": 2.0},
    ]
