"""The health app's hand-written SQL: the metric store's additive upserts and grouped reads of
`MetricBucket` rows, and the bulk insert of a pass's `HealthCheck` rows.

Writes are ``INSERT ... ON CONFLICT DO UPDATE`` statements that add the new counts to the
stored ones (PostgreSQL and SQLite both speak it), so two processes flushing the same bucket at
once both count: PostgreSQL serialises them on the row lock and applies the second update to
the first one's result; SQLite runs one writing transaction at a time. Rows go out in one
global key order, so concurrent writers take their row locks in the same order. On PostgreSQL
the rows travel as one JSON parameter per statement, and a push's idempotency key is written
by the same statement as its buckets.

Reads group buckets in the database (sums, and the histograms' JSON texts joined), so an
evaluation pass fetches one row per series and window group, not one per bucket.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.db import connection, transaction

from health.histogram import NUM_BUCKETS, Histogram
from health.ingest import BucketDelta

TABLE = "health_metricbucket"
BATCH_TABLE = "health_pushbatch"
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


@dataclass(frozen=True, slots=True)
class BatchRow:
    """The `PushBatch` row that records an idempotency key, written with the batch's deltas."""

    key: str
    digest: str
    samples: int
    source: str
    created_by_id: int | None
    received_at: datetime


def upsert(deltas: Sequence[BucketDelta], *, encoded: Sequence[str] | None = None) -> int:
    """Add ``deltas`` into their buckets, creating missing ones, atomically.

    Deltas must hold one item per key, in key order (``ingest.Deltas.sorted()`` gives that):
    PostgreSQL refuses to update one row twice in a statement. ``encoded`` is `encode()` of
    the same deltas, when the caller has it already.
    """
    if not deltas:
        return 0
    if is_postgres():
        _postgres_upsert(deltas, batch=None, encoded=encoded)
    else:
        _sqlite_upsert(deltas, batch=None)
    return len(deltas)


def upsert_once(
    deltas: Sequence[BucketDelta], *, batch: BatchRow, encoded: Sequence[str] | None = None
) -> bool:
    """`upsert` under an idempotency key: records ``batch`` and adds ``deltas`` in one
    transaction, unless a batch with the same key is already stored, in which case nothing is
    written and False is returned."""
    if is_postgres():
        return _postgres_upsert(deltas, batch=batch, encoded=encoded)
    return _sqlite_upsert(deltas, batch=batch)


def encode(deltas: Sequence[BucketDelta]) -> list[str]:
    """The deltas as JSON rows, one text per statement of `upsert` on PostgreSQL: what it
    sends, and a canonical form of a batch to hash."""
    return [_rows_json(deltas[offset : offset + CHUNK]) for offset in range(0, len(deltas), CHUNK)]


# PostgreSQL: the rows travel as one JSON parameter, read back by jsonb_array_elements. A
# statement of 1,000 rows of twelve placeholders cost more to bind on the client and to parse
# on the server than the upsert itself. Ordering by position keeps the rows in key order.
_POSTGRES_ROWS = """
    SELECT r->>0, r->>1, r->>2, to_timestamp((r->>3)::double precision), (r->>4)::integer,
        (r->>5)::bigint, (r->>6)::bigint, r->7, (r->>8)::double precision, (r->>9)::bigint,
        (r->>10)::double precision, (r->>11)::double precision
    FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows (r, n)
"""
_POSTGRES_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) {{rows}} ORDER BY rows.n "
    f"ON CONFLICT (service, version, metric, start, resolution) DO UPDATE SET {_POSTGRES_UPDATE}"
)
_POSTGRES_PLAIN = _POSTGRES_UPSERT.format(rows=_POSTGRES_ROWS)
# The key's row and the deltas in one statement: the deltas are written only when the key's
# row was (a retry's statement writes nothing), so no savepoint is needed to tell the two.
_POSTGRES_ONCE = f"""
    WITH batch AS (
        INSERT INTO {BATCH_TABLE} (key, digest, samples, source, created_by_id, received_at)
        VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING 1
    ), written AS (
        {_POSTGRES_UPSERT.format(rows=_POSTGRES_ROWS + " WHERE EXISTS (SELECT FROM batch)")}
    )
    SELECT EXISTS (SELECT FROM batch)
"""


def _postgres_upsert(
    deltas: Sequence[BucketDelta], *, batch: BatchRow | None, encoded: Sequence[str] | None
) -> bool:
    chunks = list(encoded) if encoded is not None else encode(deltas)
    if batch is not None and not chunks:
        chunks = ["[]"]
    # One statement is a transaction of its own; more need one around them.
    atomic = len(chunks) > 1 and not connection.in_atomic_block
    with transaction.atomic() if atomic else nullcontext(), connection.cursor() as cursor:
        for number, payload in enumerate(chunks):
            if batch is not None and number == 0:
                cursor.execute(
                    _POSTGRES_ONCE,
                    [
                        batch.key,
                        batch.digest,
                        batch.samples,
                        batch.source,
                        batch.created_by_id,
                        batch.received_at,
                        payload,
                    ],
                )
                if not cursor.fetchone()[0]:
                    return False
            else:
                cursor.execute(_POSTGRES_PLAIN, [payload])
    return True


def _rows_json(deltas: Sequence[BucketDelta]) -> str:
    rows = [
        (
            delta.service,
            delta.version,
            delta.metric,
            delta.start.timestamp(),
            delta.resolution,
            *delta.additions(),
        )
        for delta in deltas
    ]
    try:
        return json.dumps(rows, separators=(",", ":"), allow_nan=False)
    except ValueError:
        # A sum may overflow to infinity. JSON has no such number, but PostgreSQL reads the
        # strings 'Infinity', '-Infinity' and 'NaN' as floats.
        return json.dumps(
            [[_finite_or_text(value) for value in row] for row in rows], separators=(",", ":")
        )


def _finite_or_text(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _sqlite_upsert(deltas: Sequence[BucketDelta], *, batch: BatchRow | None) -> bool:
    adapt = connection.ops.adapt_datetimefield_value
    rows_per_statement = _sqlite_rows_per_statement()
    placeholder = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    with transaction.atomic(), connection.cursor() as cursor:
        if batch is not None:
            cursor.execute(
                f"INSERT INTO {BATCH_TABLE} "
                "(key, digest, samples, source, created_by_id, received_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                [
                    batch.key,
                    batch.digest,
                    batch.samples,
                    batch.source,
                    batch.created_by_id,
                    adapt(batch.received_at),
                ],
            )
            if cursor.rowcount != 1:
                return False
        for offset in range(0, len(deltas), rows_per_statement):
            chunk = deltas[offset : offset + rows_per_statement]
            params: list[Any] = []
            for delta in chunk:
                requests, errors, latency, *values = delta.additions()
                params.extend(
                    (
                        delta.service,
                        delta.version,
                        delta.metric,
                        adapt(delta.start),
                        delta.resolution,
                        requests,
                        errors,
                        json.dumps(latency, separators=(",", ":")),
                        *values,
                    )
                )
            values = ", ".join([placeholder] * len(chunk))
            cursor.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {values} "
                "ON CONFLICT (service, version, metric, start, resolution) "
                f"DO UPDATE SET {_SQLITE_UPDATE}",
                params,
            )
    return True


def _sqlite_rows_per_statement() -> int:
    # SQLite builds differ in how many parameters one statement may take (999 on old ones).
    connection.ensure_connection()
    limit = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(CHUNK, limit // len(COLUMNS)))


# --------------------------------------------------------------------------- checks

CHECK_TABLE = "health_healthcheck"
CHECK_COLUMNS = (
    "service",
    "canary_version",
    "stable_version",
    "policy_id",
    "policy_name",
    "window_seconds",
    "window_end",
    "window_start",
    "planned_canary_share",
    "verdict",
    "should_rollback",
    "message",
    "result",
    "created_at",
)
_POSTGRES_CHECKS = f"""
    INSERT INTO {CHECK_TABLE} ({", ".join(CHECK_COLUMNS)})
    SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, r->>4, (r->>5)::integer, (r->>6)::timestamptz,
        (r->>7)::timestamptz, (r->>8)::double precision, r->>9, (r->>10)::boolean, r->>11, r->12,
        (r->>13)::timestamptz
    FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows (r, n)
    ORDER BY rows.n
    RETURNING id
"""


def insert_checks(checks: Sequence[Any]) -> None:
    """Insert new `HealthCheck` rows and set their ids.

    On PostgreSQL the rows travel as one JSON parameter: a pass stores a thousand checks of a
    few kilobytes each, and a ``VALUES`` list of fourteen placeholders a row cost more to build,
    bind and parse than judging them. Elsewhere, ``bulk_create``.
    """
    if not checks:
        return
    if not is_postgres():
        type(checks[0]).objects.bulk_create(checks)
        return
    payload = json.dumps(
        [
            (
                check.service,
                check.canary_version,
                check.stable_version,
                check.policy_id,
                check.policy_name,
                check.window_seconds,
                check.window_end.isoformat(),
                None if check.window_start is None else check.window_start.isoformat(),
                check.planned_canary_share,
                check.verdict,
                check.should_rollback,
                check.message,
                check.result,
                check.created_at.isoformat(),
            )
            for check in checks
        ],
        separators=(",", ":"),
        # Half the encoder's time is escaping text to ASCII, which the database reads back to
        # the same characters; the results hold no cycles to look for.
        ensure_ascii=False,
        check_circular=False,
    )
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRES_CHECKS, [payload])
        ids = [row[0] for row in cursor.fetchall()]
    # RETURNING gives the rows in the order they were inserted, which ORDER BY fixed.
    for check, pk in zip(checks, ids, strict=True):
        check.pk = pk
        check._state.adding = False
        check._state.db = connection.alias


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


@dataclass(slots=True)
class Series:
    """The buckets of one series and metric, oldest first, as parallel lists: each bucket's
    start (epoch seconds), counts, latency histogram text (sparse JSON, "[]" when empty) and
    custom-metric aggregates."""

    service: str
    version: str
    metric: str
    starts: list[int]
    requests: list[int]
    errors: list[int]
    latency: list[str]
    value_sum: list[float]
    value_count: list[int]
    value_min: list[float | None]
    value_max: list[float | None]


def series(*, spans: Sequence[tuple[Iterable[str], Iterable[str], int, int]]) -> list[Series]:
    """The buckets of the series asked for, in one query. ``spans`` are (services, versions,
    low, high): the buckets of those services' versions starting in [low, high), epoch
    seconds.

    On PostgreSQL each series comes back as one row of arrays (its buckets aggregated in start
    order), which costs a fraction of one row per bucket to fetch.
    """
    wanted = []
    for services, versions, low, high in spans:
        services, versions = sorted(set(services)), sorted(set(versions))
        if services and versions and low < high:
            wanted.append((services, versions, int(low), int(high)))
    if not wanted:
        return []
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = []
    alternatives: list[str] = []
    if is_postgres():
        for services, versions, low, high in wanted:
            alternatives.append(
                "(service = ANY(%s) AND version = ANY(%s) AND start >= %s AND start < %s)"
            )
            params.extend([services, versions, _at(low), _at(high)])
        sql = (
            "SELECT service, version, metric, "
            "array_agg(EXTRACT(EPOCH FROM start)::bigint ORDER BY start), "
            "array_agg(requests ORDER BY start), array_agg(errors ORDER BY start), "
            "string_agg(latency::text, '|' ORDER BY start), "
            "array_agg(value_sum ORDER BY start), array_agg(value_count ORDER BY start), "
            "array_agg(value_min ORDER BY start), array_agg(value_max ORDER BY start) "
            f"FROM {TABLE} WHERE {' OR '.join(alternatives)} "
            "GROUP BY service, version, metric"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [
                Series(
                    service=row[0],
                    version=row[1],
                    metric=row[2],
                    starts=row[3],
                    requests=row[4],
                    errors=row[5],
                    latency=(row[6] or "").split("|"),
                    value_sum=row[7],
                    value_count=row[8],
                    value_min=row[9],
                    value_max=row[10],
                )
                for row in cursor.fetchall()
            ]
    for services, versions, low, high in wanted:
        alternatives.append(
            f"(service IN ({_marks(services)}) AND version IN ({_marks(versions)}) "
            "AND start >= %s AND start < %s)"
        )
        params.extend([*services, *versions, adapt(_at(low)), adapt(_at(high))])
    sql = (
        "SELECT service, version, metric, CAST(strftime('%%s', start) AS INTEGER), requests, "
        "errors, latency, value_sum, value_count, value_min, value_max "
        f"FROM {TABLE} WHERE {' OR '.join(alternatives)} "
        "ORDER BY service, version, metric, start"
    )
    found: dict[tuple[str, str, str], Series] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for row in cursor.fetchall():
            key = (row[0], row[1], row[2])
            item = found.get(key)
            if item is None:
                item = found[key] = Series(row[0], row[1], row[2], [], [], [], [], [], [], [], [])
            item.starts.append(int(row[3]))
            item.requests.append(int(row[4] or 0))
            item.errors.append(int(row[5] or 0))
            item.latency.append(row[6] if isinstance(row[6], str) else json.dumps(row[6]))
            item.value_sum.append(float(row[7] or 0.0))
            item.value_count.append(int(row[8] or 0))
            item.value_min.append(row[9])
            item.value_max.append(row[10])
    return list(found.values())


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))
