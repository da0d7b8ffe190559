"""The SQLite store's file: opening it with its tables, and turning records into rows and
back (times as ISO 8601 UTC text with milliseconds, a device's public key as JSON text)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ...storage import Closing, SqliteFile, add_missing_columns
from ..base import (
    DuplicateError,
    Record,
    StoreUnavailable,
    record_fields,
    record_from_fields,
    utc_ms,
)
from .schema import DEVICE_SCHEMA, MERCHANT_VIEW_SCHEMA, NOTICE_COLUMNS_ADDED, NOTICE_INDEXES, SCHEMA

JSON_COLUMNS = frozenset({"public_key"})
"""Columns holding a JSON object (a device's public JWK) as text."""


def as_row(record: Any) -> dict[str, Any]:
    """A record as a row's parameters: times as text (``as_stamp``), JSON columns as JSON text."""
    row = record_fields(record)
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = as_stamp(value)
        elif name in JSON_COLUMNS:
            row[name] = json.dumps(value, sort_keys=True)
    return row


def as_stamp(value: datetime) -> str:
    """A time as stored: ISO 8601 UTC text with milliseconds, which sorts in time order."""
    return utc_ms(value).isoformat(timespec="milliseconds")


def as_record(kind: type[Record], row: sqlite3.Row) -> Record:
    """The record a row holds, its times and JSON columns read back."""
    values = {
        name: datetime.fromisoformat(row[name]) if name.endswith("_at") and row[name] else row[name]
        for name in row.keys()  # noqa: SIM118 (a Row is not a dict)
    }
    for name in JSON_COLUMNS & values.keys():
        values[name] = json.loads(values[name])
    return record_from_fields(kind, values)


def insert_sql(table: str, row: dict[str, Any]) -> str:
    """An INSERT of the row's columns into ``table``, with named parameters."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + name for name in row)})"


class SqliteConnection(Closing):
    """One SQLite file with the store's tables, shared by the threads of a process."""

    def __init__(self, path: Path | str, busy_timeout: float = 5.0) -> None:
        self._db = SqliteFile(
            path, SCHEMA + DEVICE_SCHEMA + MERCHANT_VIEW_SCHEMA, StoreUnavailable, busy_timeout
        )
        with self._db.transaction() as tx:
            add_missing_columns(tx, "notices", NOTICE_COLUMNS_ADDED)
            tx.execute(NOTICE_INDEXES)

    def _add(self, table: str, record: Any) -> None:
        row = as_row(record)
        try:
            with self._db.transaction() as tx:
                tx.execute(insert_sql(table, row), row)
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"{table}: {exc}") from exc

    def _add_new(self, table: str, records: Sequence[Any]) -> None:
        """Insert the records in one transaction; one whose key is taken is left as stored."""
        rows = [as_row(record) for record in records]
        if rows:
            with self._db.transaction() as tx:
                tx.executemany(insert_sql(table, rows[0]).replace("INSERT", "INSERT OR IGNORE", 1), rows)

    def _one(self, kind: type[Record], sql: str, *args: Any) -> Record | None:
        with self._db.reading() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else as_record(kind, row)

    def check(self) -> None:
        with self._db.reading() as conn:
            conn.execute("SELECT 1 FROM merchants LIMIT 1").fetchall()

    def close(self) -> None:
        self._db.close()
