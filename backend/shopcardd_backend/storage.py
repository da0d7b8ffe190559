"""What the storage adapters (``gates/*``, ``stores/*``) share: ``Closing``, and ``SqliteFile``.

``Closing`` makes anything with ``close()`` a context manager. Both SQLite adapters
(``gates/sqlite.py``, ``stores/sqlite/``) open their file through ``SqliteFile``, so the
durability and locking choices are made once: WAL (readers never block the writer),
``synchronous=FULL`` (a committed claim survives a power cut: in the embedded profile the
outbox is the claim's only durable record), a busy timeout (another process holding the
write lock makes us wait, not fail at once), and ``BEGIN IMMEDIATE`` for every write (the
write lock is taken before the first read, so a read-decide-write step can never be
overtaken). Inside one process a lock serialises the threads of FastAPI's pool on one
connection: cheaper than SQLite's busy-wait between many connections.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self


class TransientError(ConnectionError):
    """A data store cannot be reached now; the caller answers 503 with ``Retry-After``.

    The gate's and the store's own errors (``GateUnavailable``, ``StoreUnavailable``) derive
    from it, so the API maps both with one handler."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


Unavailable = Callable[[str], Exception]
"""Builds the caller's own transient error (GateUnavailable, StoreUnavailable) from a message."""


class Closing:
    """Mixin: ``with adapter:`` closes it at the end, whatever happened."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def add_missing_columns(tx: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    """Give a table made by an older version the columns it lacks (name: type), at opening:
    SQLite has no ``ADD COLUMN IF NOT EXISTS``."""
    present = {row[1] for row in tx.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns.items():
        if column not in present:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class SqliteFile(Closing):
    """A connection to ``path`` with the pragmas above; ``schema`` is run once at opening.
    ``durable=False`` (``synchronous=NORMAL``: no fsync per commit; a power cut may lose the
    last commits, never the file) is for what may be lost, such as rate limit counters."""

    def __init__(
        self,
        path: Path | str,
        schema: str,
        unavailable: Unavailable,
        busy_timeout: float = 5.0,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self._unavailable = unavailable
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # ``timeout`` is SQLite's busy timeout (``sqlite3_busy_timeout``), in seconds.
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise unavailable(f"cannot open {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row  # rows unpack like tuples and are read by column name
        self._conn: sqlite3.Connection | None = conn
        with self._mapped_errors():
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        with self.transaction() as tx:
            for statement in schema.split(";"):
                if statement.strip():
                    tx.execute(statement)

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # "database is locked" past the busy timeout, disk I/O errors, a full disk: transient.
            raise self._unavailable(f"SQLite {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error, nothing half-applied."""
        with self._lock, self._mapped_errors():
            conn = self._open_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for one read; WAL gives it a consistent snapshot per statement."""
        with self._lock, self._mapped_errors():
            yield self._open_connection()

    def _open_connection(self) -> sqlite3.Connection:
        """The connection, or the caller's transient error once closed; called under the lock."""
        if self._conn is None:
            raise self._unavailable(f"SQLite {self.path} is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
