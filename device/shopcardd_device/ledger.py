"""The ledger: the device's SQLite file of redemptions, rejections, keys, revocations and time.

Durability is the point. The file runs in WAL mode with ``synchronous=FULL``, so a commit
that returned survives a power cut; the accept signal is given only after that commit. The
voucher id is the primary key of ``redemptions``: two scans racing for one voucher (two
processes, two threads) cannot both insert, and the loser is told ``already_redeemed``.
Rejections go to their own table with the reason and the raw code (as pretix keeps failed
check-ins), so a rejected scan never blocks a later valid one. Rows stay until the voucher
has expired and the row was synced.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopcardd_voucher import KeySet, Reason, Verdict

from .closing import Closing
from .errors import LedgerError
from .inputs import safe_code

SCHEMA_VERSION: Final = 1
REJECTION_RETENTION_SECONDS: Final = 30 * 86_400
BUSY_TIMEOUT_MS: Final = 10_000
_IN_MEMORY: Final = ":memory:"
_DAMAGED: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_UNREACHABLE: Final = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS redemptions (
    voucher_id  TEXT PRIMARY KEY,          -- one redemption per voucher, ever, on this device
    nonce       TEXT NOT NULL UNIQUE,      -- makes a re-upload at sync harmless
    device_id   TEXT NOT NULL,
    redeemed_at REAL NOT NULL,             -- trusted time of the scan
    clock_at    REAL NOT NULL,             -- the system clock's reading then
    deal        TEXT NOT NULL,
    user        TEXT NOT NULL,
    merchant    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    result      TEXT NOT NULL DEFAULT 'accepted',
    synced_at   REAL                       -- NULL until the backend has it
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS redemptions_unsynced ON redemptions (redeemed_at) WHERE synced_at IS NULL;
CREATE TABLE IF NOT EXISTS rejections (
    id          INTEGER PRIMARY KEY,
    nonce       TEXT NOT NULL UNIQUE,
    device_id   TEXT NOT NULL,
    scanned_at  REAL,                      -- trusted time; NULL when there was none
    clock_at    REAL NOT NULL,
    result      TEXT NOT NULL,             -- a reason code
    voucher_id  TEXT,                      -- when the code was a genuine voucher
    deal        TEXT,
    raw         TEXT NOT NULL,             -- the code as scanned, made safe (inputs.safe_code)
    detail      TEXT NOT NULL DEFAULT '',
    synced_at   REAL
);
CREATE INDEX IF NOT EXISTS rejections_unsynced ON rejections (id) WHERE synced_at IS NULL;
CREATE TABLE IF NOT EXISTS revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('voucher', 'deal')),
    value      TEXT NOT NULL,
    revoked_at REAL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,                -- time_floor, last_sync, keyset, keyset_loaded_at
    value TEXT NOT NULL
) WITHOUT ROWID;
"""
_INSERT_REDEMPTION: Final = """
INSERT INTO redemptions
    (voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user, merchant, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (voucher_id) DO NOTHING
"""
_INSERT_REJECTION: Final = """
INSERT INTO rejections (nonce, device_id, scanned_at, clock_at, result, voucher_id, deal, raw, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclass(frozen=True, slots=True)
class Redemption:
    voucher_id: str
    nonce: str
    device_id: str
    redeemed_at: float
    clock_at: float
    deal: str
    user: str
    merchant: str
    expires_at: int
    result: str
    synced_at: float | None


@dataclass(frozen=True, slots=True)
class Rejection:
    id: int
    nonce: str
    device_id: str
    scanned_at: float | None
    clock_at: float
    result: str
    voucher_id: str | None
    deal: str | None
    raw: str
    detail: str
    synced_at: float | None


class Ledger(Closing):
    """One SQLite ledger file; open one per thread (several may share the file).

    ``read_only`` (for ``status``) never writes, so it also reads a ledger on a read-only
    filesystem or in a folder this user may not write.
    """

    def __init__(self, path: str | Path, *, check: bool = True, read_only: bool = False) -> None:
        self.path = Path(path)
        in_memory = str(path) == _IN_MEMORY
        try:
            if read_only:
                self._db = self._connect_read_only()
            elif in_memory:
                self._db = sqlite3.connect(_IN_MEMORY, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if check:
                self.check_integrity()
            if read_only:
                self._check_schema()
            elif in_memory:
                self._migrate()
            else:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise LedgerError(f"ledger {self.path}: cannot switch to WAL (journal mode {mode})")
                self._db.execute("PRAGMA synchronous = FULL")
                self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from exc
        except LedgerError:
            self._db.close()
            raise

    @classmethod
    def empty(cls) -> Ledger:
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
            return LedgerError(f"ledger {self.path} is damaged or not a ledger: {exc}")
        if code in _UNREACHABLE:
            return LedgerError(
                f"cannot open or write the ledger {self.path} ({exc}): check that its folder exists and "
                "this user may write it (permissions, a read-only filesystem, a missing folder)"
            )
        if code == sqlite3.SQLITE_FULL:
            return LedgerError(f"ledger {self.path}: the disk is full ({exc})")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return LedgerError(f"ledger {self.path} is locked by another process ({exc})")
        return LedgerError(f"ledger {self.path}: {exc}")

    def _check_schema(self) -> None:
        """A read-only ledger cannot be migrated: its schema must be this software's."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.path} is not set up yet (run or verify sets it up)")
        self._refuse_newer(version)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            self._db.executescript(
                f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema {version}; this software knows {SCHEMA_VERSION}"
            )

    def check_integrity(self) -> None:
        """Run ``PRAGMA integrity_check``; a damaged ledger stops start-up rather than lose scans."""
        rows = [row[0] for row in self._db.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise LedgerError(f"ledger {self.path} failed its integrity check: {'; '.join(rows[:3])}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE) so racing writers queue, not deadlock."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # disk full, read-only file, locked past the busy timeout
            raise self._error(exc) from exc

    def _one(self, sql: str, *params: Any) -> Any:
        row = self._db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # -- facts the policy asks for (LedgerFacts) -------------------------------------------

    def is_revoked(self, voucher_id: str, deal: str) -> bool:
        return bool(
            self._one(
                "SELECT 1 FROM revocations"
                " WHERE (kind = 'voucher' AND value = ?) OR (kind = 'deal' AND value = ?)",
                voucher_id,
                deal,
            )
        )

    def redeemed_at(self, voucher_id: str) -> float | None:
        value = self._one("SELECT redeemed_at FROM redemptions WHERE voucher_id = ?", voucher_id)
        return None if value is None else float(value)

    # -- recording scans --------------------------------------------------------------------

    def record(
        self,
        verdict: Verdict,
        *,
        raw: str,
        device_id: str,
        scanned_at: float | None,
        clock_at: float,
        time_floor: float | None,
    ) -> Verdict:
        """Commit one scan (and the raised time floor) durably; return the final verdict.

        An accepted verdict becomes ``already_redeemed`` when the voucher's row already
        exists: the primary key, not an earlier read, is what makes redemption once-only.
        """
        with self._write() as db:
            if time_floor is not None:
                self._raise_floor(db, time_floor)
            voucher = verdict.voucher
            if verdict.is_accepted and voucher is not None and scanned_at is not None:
                inserted = db.execute(
                    _INSERT_REDEMPTION,
                    (
                        voucher.voucher_id,
                        uuid.uuid4().hex,
                        device_id,
                        scanned_at,
                        clock_at,
                        voucher.deal,
                        voucher.user,
                        voucher.merchant,
                        voucher.expires_at,
                    ),
                ).rowcount
                if inserted:
                    return verdict
                verdict = Verdict(Reason.ALREADY_REDEEMED, voucher, "redeemed a moment ago (race)")
            db.execute(
                _INSERT_REJECTION,
                (
                    uuid.uuid4().hex,
                    device_id,
                    scanned_at,
                    clock_at,
                    str(verdict.reason),
                    voucher.voucher_id if voucher else None,
                    voucher.deal if voucher else None,
                    safe_code(raw),
                    verdict.detail,
                ),
            )
        return verdict

    # -- time -------------------------------------------------------------------------------

    @property
    def time_floor(self) -> float | None:
        value = self._one("SELECT value FROM state WHERE name = 'time_floor'")
        return None if value is None else float(value)

    @property
    def last_sync(self) -> float | None:
        value = self._one("SELECT value FROM state WHERE name = 'last_sync'")
        return None if value is None else float(value)

    def _raise_floor(self, db: sqlite3.Connection, moment: float) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES ('time_floor', ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(state.value AS REAL)",
            (repr(float(moment)),),
        )

    def raise_floor(self, moment: float) -> None:
        """Note that ``moment`` has passed (the floor never goes down)."""
        with self._write() as db:
            self._raise_floor(db, moment)

    def note_sync(self, server_time: float) -> None:
        """After a sync: the server's time is both the last sync and a floor."""
        with self._write() as db:
            self._raise_floor(db, server_time)
            self._set(db, "last_sync", repr(float(server_time)))

    # -- keys and revocations ---------------------------------------------------------------

    def _set(self, db: sqlite3.Connection, name: str, value: str) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def store_keyset(self, keys: KeySet, loaded_at: float) -> bool:
        """Remember the key set in force; return whether it changed."""
        text = keys.to_json()
        if self._one("SELECT value FROM state WHERE name = 'keyset'") == text:
            return False
        with self._write() as db:
            self._set(db, "keyset", text)
            self._set(db, "keyset_loaded_at", repr(float(loaded_at)))
        return True

    def keyset(self) -> KeySet | None:
        text = self._one("SELECT value FROM state WHERE name = 'keyset'")
        return None if text is None else KeySet.from_jwks(text)

    def revoke(
        self, *, vouchers: Iterable[str] = (), deals: Iterable[str] = (), at: float | None = None
    ) -> None:
        rows = [("voucher", v, at) for v in vouchers] + [("deal", d, at) for d in deals]
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO revocations (kind, value, revoked_at) VALUES (?, ?, ?)", rows
            )

    # -- status, sync and retention ---------------------------------------------------------

    def accepted_count(self) -> int:
        return int(self._one("SELECT count(*) FROM redemptions"))

    def rejected_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT result, count(*) FROM rejections GROUP BY result ORDER BY result")
        return {result: count for result, count in rows}

    def unsynced_count(self) -> int:
        return int(
            self._one(
                "SELECT (SELECT count(*) FROM redemptions WHERE synced_at IS NULL)"
                " + (SELECT count(*) FROM rejections WHERE synced_at IS NULL)"
            )
        )

    def redemptions(self, *, unsynced_only: bool = False, limit: int = -1) -> list[Redemption]:
        where = "WHERE synced_at IS NULL" if unsynced_only else ""
        rows = self._db.execute(f"SELECT * FROM redemptions {where} ORDER BY redeemed_at LIMIT ?", (limit,))
        return [Redemption(*row) for row in rows]

    def rejections(self, *, unsynced_only: bool = False, limit: int = -1) -> list[Rejection]:
        where = "WHERE synced_at IS NULL" if unsynced_only else ""
        rows = self._db.execute(f"SELECT * FROM rejections {where} ORDER BY id LIMIT ?", (limit,))
        return [Rejection(*row) for row in rows]

    def mark_synced(
        self, *, redemptions: Iterable[str] = (), rejections: Iterable[int] = (), at: float
    ) -> None:
        """Mark rows the backend confirmed (by voucher id and rejection id)."""
        with self._write() as db:
            db.executemany(
                "UPDATE redemptions SET synced_at = ? WHERE voucher_id = ?", [(at, v) for v in redemptions]
            )
            db.executemany("UPDATE rejections SET synced_at = ? WHERE id = ?", [(at, i) for i in rejections])

    def prune(self, now: float, leeway: float) -> int:
        """Drop synced rows no longer needed: redemptions of expired vouchers, old rejections."""
        with self._write() as db:
            gone = db.execute(
                "DELETE FROM redemptions WHERE synced_at IS NOT NULL AND expires_at + ? < ?", (leeway, now)
            ).rowcount
            gone += db.execute(
                "DELETE FROM rejections WHERE synced_at IS NOT NULL AND clock_at < ?",
                (now - REJECTION_RETENTION_SECONDS,),
            ).rowcount
        return gone
