"""Writes of many rows in one statement, for the services that write hundreds of rows at once
(the deployments tick's decisions: phases, deployments, events, audit entries, routing weights).

On PostgreSQL the rows travel as one JSON parameter, unpacked into rows by
``jsonb_to_recordset``: Django's bulk_update builds a CASE per field and row, and its
bulk_create binds a column of values as an array, escaping every text and JSON value in Python,
which for a thousand events with their evidence costs more than the database's whole work.
Elsewhere, Django's own bulk methods.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    ForeignKey,
    IntegerField,
    JSONField,
    PositiveBigIntegerField,
    PositiveIntegerField,
    PositiveSmallIntegerField,
    SmallAutoField,
    SmallIntegerField,
    TextField,
)

# Fields whose database value is the attribute itself when it is None or of the type named
# (their get_db_prep_save returns it unchanged): most of a row's values skip Django's per-value
# preparation, which would cost more than the rest of the write.
_INTEGERS = (
    AutoField,
    BigAutoField,
    SmallAutoField,
    IntegerField,
    BigIntegerField,
    SmallIntegerField,
    PositiveIntegerField,
    PositiveBigIntegerField,
    PositiveSmallIntegerField,
)
_PLAIN_TYPES: dict[type, type] = {
    CharField: str,
    TextField: str,
    BooleanField: bool,
    **dict.fromkeys(_INTEGERS, int),
}


def write_rows(model: Any, rows: list[Any], fields: list[str]) -> None:
    """Write ``fields`` of many rows in one statement (bulk_update's work)."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(rows, fields, batch_size=500)
        return
    columns = [model._meta.get_field(name) for name in fields]
    table = connection.ops.quote_name(model._meta.db_table)
    quoted = [connection.ops.quote_name(column.column) for column in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in quoted)
    types = ", ".join(
        f"{name} {column.cast_db_type(connection) or column.db_type(connection)}"
        for name, column in zip(quoted, columns, strict=True)
    )
    for offset in range(0, len(rows), 5_000):
        records = [
            {
                "id": row.pk,
                **{column.column: _json_value(getattr(row, column.attname)) for column in columns},
            }
            for row in rows[offset : offset + 5_000]
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} "
                f"FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, {types}) WHERE t.id = v.id",
                [json.dumps(records, separators=(",", ":"))],
            )


def insert_rows(model: Any, rows: list[Any]) -> None:
    """Insert new rows in one statement and set their ids (bulk_create's work, for a model
    whose database makes its ids). Each column's value is the one bulk_create would bind."""
    if not rows:
        return
    meta = model._meta
    if (
        connection.vendor != "postgresql"
        or not meta.pk.db_returning
        or any(row.pk is not None for row in rows)
    ):
        model.objects.bulk_create(rows)
        return
    columns = [field for field in meta.concrete_fields if field is not meta.pk]
    quoted = [connection.ops.quote_name(column.column) for column in columns]
    types = ", ".join(
        f"{name} {column.cast_db_type(connection) or column.db_type(connection)}"
        for name, column in zip(quoted, columns, strict=True)
    )
    plain = [(column.column, column.attname, _plain_type(column)) for column in columns]
    records = []
    for row in rows:
        row._prepare_related_fields_for_save(operation_name="bulk_create")
        values = row.__dict__
        record = {}
        for (name, attname, kind), column in zip(plain, columns, strict=True):
            value = values.get(attname, _MISSING)
            if kind is not None and (value is None or type(value) is kind):
                record[name] = value
            else:
                record[name] = _column_value(column, row)
        records.append(record)
    names = ", ".join(quoted)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({names}) "
            f"SELECT {names} FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({types})) "
            f"WITH ORDINALITY AS v({names}, n) ORDER BY v.n "
            f"RETURNING {connection.ops.quote_name(meta.pk.column)}",
            [json.dumps(records, separators=(",", ":"))],
        )
        ids = [found[0] for found in cursor.fetchall()]
    # RETURNING gives the rows in the order they were inserted, which ORDER BY fixed.
    for row, pk in zip(rows, ids, strict=True):
        row.pk = pk
        row._state.adding = False
        row._state.db = connection.alias


_MISSING = object()
_AS_TEXT = (Decimal, UUID, IPv4Address, IPv6Address, IPv4Interface, IPv6Interface)


def _plain_type(column: Any) -> type | None:
    """The type whose values ``column`` writes as they are (see `_PLAIN_TYPES`), if any."""
    if type(column) is ForeignKey:
        target = column.target_field
        return int if type(target) in _INTEGERS else None
    return _PLAIN_TYPES.get(type(column))


def _column_value(column: Any, row: Any) -> Any:
    value = column.pre_save(row, True)
    if isinstance(column, JSONField):
        if value is None or column.encoder is None:
            return value
        # As the field would write it: what its encoder makes of the value.
        return json.loads(json.dumps(value, cls=column.encoder))
    return _json_value(column.get_db_prep_save(value, connection))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, _AS_TEXT):
        return str(value)
    return value
