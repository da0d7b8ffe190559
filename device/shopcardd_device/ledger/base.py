"""Opening a ledger file: WAL and ``synchronous=FULL``, read-only and in-memory ledgers, the
schema brought up to date, SQLite's errors named as an operator acts on them, and one write
transaction at a time. The tables' own methods (the other modules of this package) build on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Self

from ..closing import Closing
from ..errors import LedgerDamaged, LedgerError, LedgerFull, LedgerOfAnotherDevice
from ..inputs import fingerprint, safe_code
from .schema import DEFAULT_MAX_REJECTIONS, MIGRATIONS, SCHEMA_VERSION, _statements

BUSY_TIMEOUT_MS: Final = 10_000


FILE_MODE: Final = 0o600
"""The ledger's files (the database, its ``-wal`` and ``-shm``): the counter's user only, whatever
the umask (SQLite gives the ``-wal`` and ``-shm`` files the database file's mode)."""


NO_SPACE_BYTES: Final = 64 * 1024
"""Less free space than this, and an I/O error of the ledger is a full disk."""


_IN_MEMORY: Final = ":memory:"


_DAMAGED: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


_UNREACHABLE: Final = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}
)


class LedgerFile(Closing):
    """One ledger file opened, checked and brought up to date, and its write transactions;
    ``Ledger`` mixes the tables' methods in (see it for the arguments)."""

    def __init__(
        self,
        path: str | Path,
        *,
        check: bool = True,
        read_only: bool = False,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
        device_id: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_rejections = max_rejections
        in_memory = str(path) == _IN_MEMORY
        try:
            if read_only:
                self._db = self._connect_read_only()
            elif in_memory:
                self._db = sqlite3.connect(_IN_MEMORY, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._restrict_files()
                self._db = sqlite3.connect(self.path, isolation_level=None)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            self._db.create_function("fingerprint", 1, fingerprint, deterministic=True)  # for SCHEMA_V3
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if check:
                self.check_integrity()
            if read_only:
                self._check_schema()
            elif in_memory:
                self._migrate()
            else:
                mode = self._switch_to_wal()
                if mode.lower() != "wal":
                    raise LedgerError(f"ledger {self.path}: cannot switch to WAL (journal mode {mode})")
                self._db.execute("PRAGMA synchronous = FULL")
                self._migrate()
            if device_id is not None:
                self._bind(device_id, claim=not read_only)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from exc
        except LedgerError:
            self._db.close()
            raise

    def _restrict_files(self) -> None:
        """Make the database file (if missing) and set it and its ``-wal`` and ``-shm`` to
        ``FILE_MODE``: SQLite would make them 0644 less the umask, readable by every user. What
        cannot be changed (a read-only filesystem) is left for SQLite's own error to name."""
        with contextlib.suppress(OSError):  # there already, or SQLite will say why it cannot be made
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
            finally:
                os.close(fd)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                file = self.path.with_name(self.path.name + suffix)
                if file.stat().st_mode & 0o777 != FILE_MODE:
                    file.chmod(FILE_MODE)

    def _bind(self, device_id: str, *, claim: bool) -> None:
        """Refuse a ledger of another device; ``claim``: record ``device_id`` in one that has none
        (new, or kept from before ledgers recorded it: then only if its redemptions are this
        device's)."""
        with self._write() if claim else contextlib.nullcontext(self._db) as db:
            row = (
                db.execute("SELECT value FROM state WHERE name = 'device_id'").fetchone()
                or db.execute(
                    "SELECT device_id FROM redemptions WHERE device_id != ? LIMIT 1", (device_id,)
                ).fetchone()
            )
            owner = None if row is None else str(row[0])
            if owner is None and claim:
                self._set(db, "device_id", device_id)
        if owner is not None and owner != device_id:
            raise LedgerOfAnotherDevice(
                f"ledger {self.path} is device {safe_code(owner)!r}'s, not {device_id!r}'s: give each "
                "counter a data_dir of its own (two counters sharing a ledger would answer one's scans "
                "with the other's redemptions)"
            )

    def _switch_to_wal(self) -> str:
        """The journal mode after asking for WAL. The switch takes the file's exclusive lock, and
        while another process opens the same new ledger SQLite may answer "locked" at once
        instead of waiting out the busy timeout: ask again, within that timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return str(self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                busy = (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @classmethod
    def empty(cls) -> Self:
        """An empty ledger in memory (nothing redeemed, nothing revoked, no time floor) that
        touches no file: what ``verify --dry-run`` judges against before any ledger exists."""
        return cls(_IN_MEMORY)

    def _connect_read_only(self) -> sqlite3.Connection:
        """``mode=ro``. A WAL ledger needs its shared-memory file, which a read-only folder cannot
        hold; a ledger closed cleanly (no ``-wal`` file) has everything in the main file, and
        there nobody can write it, so it is read as immutable."""
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
        try:
            db.execute("PRAGMA user_version").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            wal = self.path.with_name(self.path.name + "-wal")
            folder_read_only = self.path.is_file() and not os.access(self.path.parent, os.W_OK)
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_CANTOPEN or wal.exists() or not folder_read_only:
                raise
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        """Name the cause an operator acts on: only a damaged file needs repair; a folder that
        cannot be written, a full disk or a lock do not."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
        if code in _DAMAGED:
            return LedgerDamaged(f"ledger {self.path} is damaged or not a ledger: {exc}")
        if code in _UNREACHABLE:
            return LedgerError(
                f"cannot open or write the ledger {self.path} ({exc}): check that its folder exists and "
                "this user may write it (permissions, a read-only filesystem, a missing folder)"
            )
        if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and self._no_space_left()):
            return LedgerFull(
                f"ledger {self.path}: the disk is full ({exc}): nothing is recorded or accepted until "
                "space is freed on its filesystem"
            )
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return LedgerError(f"ledger {self.path} is locked by another process ({exc})")
        return LedgerError(f"ledger {self.path}: {exc}")

    def _no_space_left(self) -> bool:
        """Whether the ledger's filesystem is full for this user: SQLite reports a full disk met
        while growing its shared-memory file as an I/O error, not as SQLITE_FULL."""
        try:
            return shutil.disk_usage(self.path.parent).free < NO_SPACE_BYTES
        except OSError:
            return False

    def _check_schema(self) -> None:
        """A read-only ledger cannot be migrated: its schema must be this software's."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} is not set up yet, or older (run, verify or sync sets it up)"
            )
        self._refuse_newer(version)

    def _migrate(self) -> None:
        """Bring the schema up to ``SCHEMA_VERSION`` in one transaction; the version is read again
        inside it, so two processes starting at once migrate once."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        self._refuse_newer(version)
        if version == SCHEMA_VERSION:
            return
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            self._refuse_newer(version)
            for script in MIGRATIONS[version:]:
                for statement in _statements(script):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema {version}; this software knows {SCHEMA_VERSION}"
            )

    def check_integrity(self) -> None:
        """Run ``PRAGMA integrity_check``; a damaged ledger stops start-up rather than lose scans."""
        rows = [row[0] for row in self._db.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise LedgerDamaged(
                f"ledger {self.path} is damaged: its integrity check found {'; '.join(rows[:3])}"
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE) so racing writers queue, not deadlock.

        A COMMIT that fails (a full disk) leaves the transaction open: it is rolled back here, or
        every later write would fail too and the counter would not recover when space returns.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:  # disk full, read-only file, locked past the busy timeout
            raise self._error(exc) from exc

    def _rollback(self) -> None:
        """Roll back what is open (SQLite may have done so itself); a failure here must not hide
        the error that caused it."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _one(self, sql: str, *params: Any) -> Any:
        row = self._db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _state(self, name: str) -> str | None:
        value = self._one("SELECT value FROM state WHERE name = ?", name)
        return None if value is None else str(value)

    def _number(self, name: str) -> float | None:
        value = self._state(name)
        return None if value is None else float(value)

    def _set(self, db: sqlite3.Connection, name: str, value: str) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
