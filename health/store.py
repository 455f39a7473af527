"""The metric store's SQL: additive upserts and grouped reads of `MetricBucket` rows.

Writes are ``INSERT ... ON CONFLICT DO UPDATE`` statements that add the new counts to the
stored ones (PostgreSQL and SQLite both speak it), so two processes flushing the same bucket at
once both count: PostgreSQL serialises them on the row lock and applies the second update to
the first one's result; SQLite runs one writing transaction at a time. Rows go out in one
global key order, so concurrent writers take their row locks in the same order.

Reads group buckets in the database (sums, and the histograms' JSON texts joined), so an
evaluation pass fetches one row per series and window group, not one per bucket.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.db import connection

from health.histogram import NUM_BUCKETS, Histogram
from health.ingest import BucketDelta

TABLE = "health_metricbucket"
COLUMNS = (
    "service",
    "version",
    "metric",
    "start",
    "resolution",
    "requests",
    "errors",
    "latency",
    "value_sum",
    "value_count",
    "value_min",
    "value_max",
)
CHUNK = 1000  # rows per statement: well under PostgreSQL's 65,535 parameters

_POSTGRES_UPDATE = f"""
    requests = {TABLE}.requests + EXCLUDED.requests,
    errors = {TABLE}.errors + EXCLUDED.errors,
    latency = CASE
        WHEN EXCLUDED.latency = '[]'::jsonb THEN {TABLE}.latency
        WHEN {TABLE}.latency = '[]'::jsonb THEN EXCLUDED.latency
        ELSE (
            SELECT jsonb_agg(jsonb_build_array(merged.i, merged.c) ORDER BY merged.i)
            FROM (
                SELECT (e.value->>0)::int AS i, SUM((e.value->>1)::bigint) AS c
                FROM jsonb_array_elements({TABLE}.latency || EXCLUDED.latency) AS e
                GROUP BY 1
            ) AS merged
        )
    END,
    value_sum = {TABLE}.value_sum + EXCLUDED.value_sum,
    value_count = {TABLE}.value_count + EXCLUDED.value_count,
    value_min = LEAST({TABLE}.value_min, EXCLUDED.value_min),
    value_max = GREATEST({TABLE}.value_max, EXCLUDED.value_max)
"""

_SQLITE_UPDATE = f"""
    requests = {TABLE}.requests + excluded.requests,
    errors = {TABLE}.errors + excluded.errors,
    latency = CASE
        WHEN excluded.latency = '[]' THEN {TABLE}.latency
        WHEN {TABLE}.latency = '[]' THEN excluded.latency
        ELSE (
            SELECT json_group_array(json_array(merged.i, merged.c))
            FROM (
                SELECT json_extract(e.value, '$[0]') AS i, SUM(json_extract(e.value, '$[1]')) AS c
                FROM (
                    SELECT value FROM json_each({TABLE}.latency)
                    UNION ALL SELECT value FROM json_each(excluded.latency)
                ) AS e
                GROUP BY 1 ORDER BY 1
            ) AS merged
        )
    END,
    value_sum = {TABLE}.value_sum + excluded.value_sum,
    value_count = {TABLE}.value_count + excluded.value_count,
    value_min = min(
        coalesce({TABLE}.value_min, excluded.value_min),
        coalesce(excluded.value_min, {TABLE}.value_min)
    ),
    value_max = max(
        coalesce({TABLE}.value_max, excluded.value_max),
        coalesce(excluded.value_max, {TABLE}.value_max)
    )
"""


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def upsert(deltas: Sequence[BucketDelta]) -> int:
    """Add ``deltas`` into their buckets, creating missing ones. Run inside a transaction.

    Deltas must hold one item per key, in key order (``ingest.Deltas.sorted()`` gives that):
    PostgreSQL refuses to update one row twice in a statement.
    """
    if not deltas:
        return 0
    postgres = is_postgres()
    placeholder = (
        "(%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)"
        if postgres
        else "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    update = _POSTGRES_UPDATE if postgres else _SQLITE_UPDATE
    conflict = "(service, version, metric, start, resolution)"
    adapt = connection.ops.adapt_datetimefield_value
    rows_per_statement = CHUNK if postgres else _sqlite_rows_per_statement()
    with connection.cursor() as cursor:
        for offset in range(0, len(deltas), rows_per_statement):
            chunk = deltas[offset : offset + rows_per_statement]
            params: list[Any] = []
            for delta in chunk:
                params.extend(
                    (
                        delta.service,
                        delta.version,
                        delta.metric,
                        adapt(delta.start),
                        delta.resolution,
                        delta.requests,
                        delta.errors,
                        json.dumps(delta.sparse_latency(), separators=(",", ":")),
                        delta.value_sum,
                        delta.value_count,
                        delta.value_min,
                        delta.value_max,
                    )
                )
            values = ", ".join([placeholder] * len(chunk))
            cursor.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {values} "
                f"ON CONFLICT {conflict} DO UPDATE SET {update}",
                params,
            )
    return len(deltas)


def _sqlite_rows_per_statement() -> int:
    # SQLite builds differ in how many parameters one statement may take (999 on old ones).
    connection.ensure_connection()
    limit = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(CHUNK, limit // len(COLUMNS)))


# --------------------------------------------------------------------------- grouped reads


@dataclass(slots=True)
class Group:
    """Buckets of one series and metric summed over one group of ``group_seconds``."""

    service: str
    version: str
    metric: str
    index: int  # 0 is the group ending at the read's end, 1 the one before, ...
    requests: int
    errors: int
    latency_text: str | None
    value_sum: float
    value_count: int
    value_min: float | None
    value_max: float | None
    parsed: Histogram | None = None

    def histogram(self) -> Histogram:
        """The group's latency histogram, parsed once."""
        if self.parsed is None:
            self.parsed = histogram_from_texts(self.latency_text)
        return self.parsed


_TO_SPACES = str.maketrans("[],", "   ")


def histogram_from_texts(text: str | None) -> Histogram:
    """One histogram from sparse lists joined by commas (``[[1,2]],[[1,3],[4,1]]``).

    Read as a flat run of numbers by numpy: an evaluation pass parses thousands of these, and
    decoding them as JSON into nested lists was most of its time.
    """
    histogram = Histogram()
    if not text:
        return histogram
    numbers = np.fromstring(text.translate(_TO_SPACES), dtype=np.int64, sep=" ")
    if numbers.size % 2:
        raise ValueError("a stored latency histogram is not a list of [index, count] pairs")
    counts = np.bincount(numbers[0::2], weights=numbers[1::2], minlength=NUM_BUCKETS)
    if counts.size > NUM_BUCKETS:
        raise ValueError("a stored latency histogram has a bucket index out of range")
    histogram.counts = counts.astype(np.int64).tolist()
    histogram.total = sum(histogram.counts)
    return histogram


def grouped(
    *,
    services: Iterable[str],
    spans: Sequence[tuple[Iterable[str], int]],
    end: datetime,
    group_seconds: int,
    metrics: Iterable[str] | None = None,
) -> list[Group]:
    """Sums of buckets per series, metric and group, in one query.

    ``spans`` pairs sets of versions with how far back to read them: buckets of those versions
    starting in ``[end - span, end)``. Group ``k`` holds the buckets starting in
    ``[end - (k+1) * group, end - k * group)``. ``metrics`` None reads every metric.
    """
    services = sorted(set(services))
    wanted = [(sorted(set(versions)), span) for versions, span in spans]
    wanted = [(versions, span) for versions, span in wanted if versions and span > 0]
    if not services or not wanted:
        return []
    end_ts = int(end.timestamp())
    if is_postgres():
        epoch = "EXTRACT(EPOCH FROM start)::bigint"
        joined = "string_agg(latency::text, ',') FILTER (WHERE latency <> '[]'::jsonb)"
    else:
        epoch = "CAST(strftime('%%s', start) AS INTEGER)"
        joined = "group_concat(CASE WHEN latency <> '[]' THEN latency END, ',')"
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = [end_ts, group_seconds, *services, adapt(_at(end_ts))]
    alternatives: list[str] = []
    for versions, span in wanted:
        alternatives.append(f"(version IN ({_marks(versions)}) AND start >= %s)")
        params.extend([*versions, adapt(_at(end_ts - span))])
    metric_filter = ""
    if metrics is not None:
        metric_list = sorted(set(metrics))
        metric_filter = f"AND metric IN ({_marks(metric_list)}) "
        params.extend(metric_list)
    sql = (
        f"SELECT service, version, metric, (%s - {epoch} - 1) / %s AS grp, "
        f"SUM(requests), SUM(errors), {joined}, SUM(value_sum), SUM(value_count), "
        f"MIN(value_min), MAX(value_max) FROM {TABLE} "
        f"WHERE service IN ({_marks(services)}) AND start < %s "
        f"AND ({' OR '.join(alternatives)}) {metric_filter}"
        "GROUP BY service, version, metric, grp"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        Group(
            service=row[0],
            version=row[1],
            metric=row[2],
            index=int(row[3]),
            requests=int(row[4] or 0),
            errors=int(row[5] or 0),
            latency_text=row[6],
            value_sum=float(row[7] or 0.0),
            value_count=int(row[8] or 0),
            value_min=row[9],
            value_max=row[10],
        )
        for row in rows
    ]


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))
