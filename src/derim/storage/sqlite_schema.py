"""SQL for the SQLite backend: one wide raw table keyed by (device, time) and rollup tiers.

Writes append to ``staging`` (a plain rowid table, so a commit touches a page or two however many
devices it covers); a merge moves staged rows into ``telemetry`` in large sorted batches. The raw
table ``telemetry`` has one column per canonical field and the primary key ``(dev, ts)``
(``WITHOUT ROWID``), so a device's time range is one contiguous B-tree walk. ``ts`` is epoch
milliseconds; ``dev`` is a small integer from ``series``. Each rollup tier ``rollup_<ms>`` holds,
per device and bucket, the count, sum, min, max and last non-null value of every real-valued
field, so a downsampled query reads one row per bucket instead of scanning raw data.
"""

from __future__ import annotations

import functools

from derim.storage.base import AGGREGATABLE_FIELDS, FIELD_TYPES, Interval

TIERS: tuple[Interval, ...] = (Interval.MINUTE, Interval.QUARTER_HOUR, Interval.HOUR, Interval.DAY)
"""Rollup tiers, finest first; each is computed from the one before (the first from raw)."""

SQL_TYPES = {float: "REAL", int: "INTEGER", str: "TEXT"}
ISO_TIMESTAMP = "strftime('%Y-%m-%dT%H:%M:%fZ', {col} / 1000.0, 'unixepoch')"
STATS = ("n", "sum", "min", "max", "last")


def tier_table(interval: Interval) -> str:
    """Name of the rollup table of one tier."""
    return f"rollup_{interval.milliseconds}"


def tier_columns() -> list[str]:
    """Per-field statistic columns of a rollup table, in table order."""
    return [f"{stat}_{name}" for name in AGGREGATABLE_FIELDS for stat in STATS]


def create_statements() -> list[str]:
    """DDL for a fresh database (idempotent)."""
    raw_cols = ", ".join(f"{n} {SQL_TYPES[t]}" for n, t in FIELD_TYPES.items())
    statements = [
        f"CREATE TABLE IF NOT EXISTS staging (seq INTEGER PRIMARY KEY, dev INTEGER NOT NULL, "
        f"ts INTEGER NOT NULL, {raw_cols})",
        "CREATE TABLE IF NOT EXISTS series (dev INTEGER PRIMARY KEY, "
        "device_id TEXT UNIQUE NOT NULL, fields TEXT NOT NULL DEFAULT '')",
        f"CREATE TABLE IF NOT EXISTS telemetry (dev INTEGER NOT NULL, ts INTEGER NOT NULL, "
        f"{raw_cols}, PRIMARY KEY (dev, ts)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS rollup_dirty (dev INTEGER NOT NULL, day INTEGER NOT NULL, "
        "lo INTEGER NOT NULL, hi INTEGER NOT NULL, PRIMARY KEY (dev, day)) WITHOUT ROWID",
    ]
    stat_cols = ", ".join(
        f"{col} {'INTEGER' if col.startswith('n_') else 'REAL'}" for col in tier_columns()
    )
    for interval in TIERS:
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {tier_table(interval)} (dev INTEGER NOT NULL, "
            f"bucket INTEGER NOT NULL, n INTEGER NOT NULL, last_ts INTEGER NOT NULL, "
            f"{stat_cols}, PRIMARY KEY (dev, bucket)) WITHOUT ROWID"
        )
    return statements


def missing_columns(table: str, existing: set[str]) -> list[str]:
    """``ALTER TABLE`` statements adding canonical columns that an older table lacks."""
    if table in ("telemetry", "staging"):
        wanted = {n: SQL_TYPES[t] for n, t in FIELD_TYPES.items()}
    else:
        wanted = {c: "INTEGER" if c.startswith("n_") else "REAL" for c in tier_columns()}
    return [
        f"ALTER TABLE {table} ADD COLUMN {c} {t}" for c, t in wanted.items() if c not in existing
    ]


@functools.cache
def stage_statement(fields: tuple[str, ...]) -> str:
    """Append rows ``(dev, ts, *fields)`` to the staging table (no index: a cheap append)."""
    marks = ", ".join("?" * (len(fields) + 2))
    return f"INSERT INTO staging (dev, ts, {', '.join(fields)}) VALUES ({marks})"


def merge_statements() -> list[str]:
    """Move staged rows into ``telemetry`` in key order and mark the rollups they touch.

    A second reading of a device at the same instant fills the first one's gaps; among staged
    duplicates the later one (higher ``seq``) wins.
    """
    cols = ", ".join(FIELD_TYPES)
    updates = ", ".join(f"{f} = coalesce(excluded.{f}, {f})" for f in FIELD_TYPES)
    return [
        f"INSERT INTO telemetry (dev, ts, {cols}) SELECT dev, ts, {cols} FROM staging "
        f"WHERE true ORDER BY dev, ts, seq ON CONFLICT (dev, ts) DO UPDATE SET {updates}",
        "INSERT INTO rollup_dirty (dev, day, lo, hi) "
        "SELECT dev, ts / 86400000, min(ts), max(ts) FROM staging WHERE true "
        "GROUP BY dev, ts / 86400000 ON CONFLICT (dev, day) DO UPDATE SET "
        "lo = min(lo, excluded.lo), hi = max(hi, excluded.hi)",
        "DELETE FROM staging",
    ]


def _stat_columns(fields: tuple[str, ...]) -> str:
    return "".join(f", {stat}_{f}" for f in fields for stat in STATS)


@functools.cache
def rollup_from_raw_statement(interval: Interval, fields: tuple[str, ...]) -> str:
    """Recompute one device's buckets of the finest tier in ``[?, ?)`` from raw rows.

    Parameters: dev, start_ms, end_ms. Only ``fields`` are aggregated; the other statistic
    columns stay null. ``last_<f>`` is the field's latest non-null value in the bucket (one
    primary-key lookup per field and bucket). The scan follows the primary key, so grouping needs
    no sort.
    """
    width = interval.milliseconds
    aggs = "".join(
        f", count({f}) AS n_{f}, sum({f}) AS sum_{f}, min({f}) AS min_{f}, max({f}) AS max_{f}"
        f", max(CASE WHEN {f} IS NOT NULL THEN ts END) AS at_{f}"
        for f in fields
    )
    stats = "".join(
        f", n_{f}, sum_{f}, min_{f}, max_{f}, "
        f"(SELECT {f} FROM telemetry WHERE dev = a.dev AND ts = a.at_{f})"
        for f in fields
    )
    return (
        f"INSERT OR REPLACE INTO {tier_table(interval)} (dev, bucket, n, last_ts"
        f"{_stat_columns(fields)}) SELECT dev, bucket, n, last_ts{stats} FROM ("
        f"SELECT dev, (ts / {width}) * {width} AS bucket, count(*) AS n, max(ts) AS last_ts"
        f"{aggs} FROM telemetry WHERE dev = ? AND ts >= ? AND ts < ? GROUP BY bucket) AS a"
    )


@functools.cache
def rollup_from_tier_statement(
    interval: Interval, source: Interval, fields: tuple[str, ...]
) -> str:
    """Recompute one device's ``interval`` buckets in ``[?, ?)`` from the finer ``source`` tier."""
    width = interval.milliseconds
    src = tier_table(source)
    aggs = "".join(
        f", sum(n_{f}) AS n_{f}, sum(sum_{f}) AS sum_{f}, min(min_{f}) AS min_{f}, "
        f"max(max_{f}) AS max_{f}, max(CASE WHEN last_{f} IS NOT NULL THEN bucket END) AS at_{f}"
        for f in fields
    )
    stats = "".join(
        f", n_{f}, sum_{f}, min_{f}, max_{f}, "
        f"(SELECT last_{f} FROM {src} WHERE dev = a.dev AND bucket = a.at_{f})"
        for f in fields
    )
    return (
        f"INSERT OR REPLACE INTO {tier_table(interval)} (dev, bucket, n, last_ts"
        f"{_stat_columns(fields)}) SELECT dev, b, n, last_ts{stats} FROM ("
        f"SELECT dev, (bucket / {width}) * {width} AS b, sum(n) AS n, "
        f"max(last_ts) AS last_ts{aggs} "
        f"FROM {src} WHERE dev = ? AND bucket >= ? AND bucket < ? GROUP BY b) AS a"
    )


AGG_EXPRESSIONS = {
    "mean": "sum_{f} / n_{f}",
    "min": "min_{f}",
    "max": "max_{f}",
    "last": "last_{f}",
    "sum": "sum_{f}",
}


def page_statement(
    fields: tuple[str, ...], *, table: str, time_col: str, agg: str | None, descending: bool
) -> str:
    """Select the rows in ``[?, ?)`` as a JSON array built inside SQLite, plus count and bounds.

    Parameters: dev, start_ms, end_ms. Field names come from the canonical whitelist only.
    """
    if agg is None:
        values = ", ".join(f"'{f}', {f}" for f in fields)
        inner_cols = ", ".join(fields)
    else:
        values = ", ".join(f"'{f}', v_{f}" for f in fields)
        inner_cols = ", ".join(f"{AGG_EXPRESSIONS[agg].format(f=f)} AS v_{f}" for f in fields)
    order = "DESC" if descending else "ASC"
    timestamp = ISO_TIMESTAMP.format(col="t")
    return (
        f"SELECT json_group_array(json_object('timestamp', {timestamp}, {values})), count(*), "
        f"min(t), max(t) FROM (SELECT {time_col} AS t, {inner_cols} FROM {table} "
        f"WHERE dev = ? AND {time_col} >= ? AND {time_col} < ? ORDER BY {time_col} {order})"
    )


def cutoff_statement(*, table: str, time_col: str, descending: bool) -> str:
    """The time of the first row past a page of ``?`` rows in ``[?, ?)``, if any.

    Parameters: dev, start_ms, end_ms, limit.
    """
    order = "DESC" if descending else "ASC"
    return (
        f"SELECT {time_col} FROM {table} WHERE dev = ? AND {time_col} >= ? AND {time_col} < ? "
        f"ORDER BY {time_col} {order} LIMIT 1 OFFSET ?"
    )
