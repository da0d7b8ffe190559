"""The ledger: the device's SQLite file of redemptions, rejections, keys, revocations and time.

Durability is the point. The file runs in WAL mode with ``synchronous=FULL``, so a commit
that returned survives a power cut; the accept signal is given only after that commit. The
voucher id is the primary key of ``redemptions``: two scans racing for one voucher (two
processes, two threads) cannot both insert, and the loser is told ``already_redeemed``.
Rejections go to their own table with the reason (as pretix keeps failed check-ins), so a
rejected scan never blocks a later valid one. A rejection keeps a short fingerprint of the code,
never the code itself, and the voucher id of a genuine voucher: a stolen ledger holds no voucher
that another counter, or this one later, would accept. The table is capped (oldest rows go first;
``max_rejections``) and the counts by reason are kept apart, exact: a phone cycling junk codes
cannot fill the SD card, after which nothing could be recorded.

The ledger is also the device's one source of the key set (seeded from the ``keyset`` file,
replaced by each sync), its revocations, its peers and its time floor. ``apply_sync`` writes
all a sync brought in one transaction, so a sync cut off at any point leaves the ledger as it
was or as the backend confirmed it, never half-way. Redemptions are numbered (``seq``) as
they are recorded; the upload watermark is the last number the backend confirmed, so the next
sync starts where the last confirmed batch ended (trusted times are no order: a sync may set
the floor back). Synced redemptions go only when their voucher expired by the server's time of
a sync, never by the word of the device's own clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopcardd_voucher import KeySet, Reason, Verdict, VerificationKey

from .closing import Closing
from .errors import LedgerDamaged, LedgerError, LedgerFull, LedgerOfAnotherDevice
from .inputs import fingerprint, safe_code

SCHEMA_VERSION: Final = 5
REJECTION_RETENTION_SECONDS: Final = 30 * 86_400
DEFAULT_MAX_REJECTIONS: Final = 10_000
"""Rejection rows kept (about 2 MB); older ones go first, their counts by reason stay."""
MAX_DETAIL_LENGTH: Final = 200
"""A verdict's detail may quote the token (a kid): stored cut to this."""
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
    raw         TEXT NOT NULL,             -- schema 3: the code's fingerprint (inputs.fingerprint)
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
    name  TEXT PRIMARY KEY,  -- time_floor, last_sync, keyset, sync_failure, device_id, trust_key, ...
    value TEXT NOT NULL
) WITHOUT ROWID;
"""
SCHEMA_V2: Final = """
ALTER TABLE redemptions ADD COLUMN seq INTEGER;                -- recording order: the upload watermark
ALTER TABLE redemptions ADD COLUMN backend_status TEXT;        -- the backend's verdict: ok or conflict
ALTER TABLE redemptions ADD COLUMN first_device_id TEXT;       -- conflict: the device recorded first
ALTER TABLE redemptions ADD COLUMN first_redeemed_at REAL;     -- and when it redeemed the voucher
UPDATE redemptions SET seq = numbered.n FROM (
    SELECT voucher_id, row_number() OVER (ORDER BY redeemed_at, voucher_id) AS n FROM redemptions
) AS numbered WHERE numbered.voucher_id = redemptions.voucher_id;
CREATE UNIQUE INDEX redemptions_seq ON redemptions (seq);
DROP INDEX IF EXISTS redemptions_unsynced;
CREATE INDEX redemptions_synced_expiry ON redemptions (expires_at) WHERE synced_at IS NOT NULL;
INSERT INTO state (name, value) SELECT 'redemption_seq', CAST(count(*) AS TEXT) FROM redemptions
    WHERE true ON CONFLICT (name) DO NOTHING;
CREATE TABLE peers (
    device_id  TEXT PRIMARY KEY,                               -- the merchant's other counters
    public_key TEXT NOT NULL                                   -- their Ed25519 JWK (JSON)
) WITHOUT ROWID;
"""
SCHEMA_V3: Final = f"""
CREATE TABLE rejection_counts (
    result TEXT PRIMARY KEY,                                   -- a reason code
    count  INTEGER NOT NULL                                    -- every rejection ever recorded with it
) WITHOUT ROWID;
INSERT INTO rejection_counts (result, count) SELECT result, count(*) FROM rejections GROUP BY result;
DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - {DEFAULT_MAX_REJECTIONS};
UPDATE rejections SET raw = fingerprint(raw);                  -- no whole code stays in the ledger
"""
"""Counts first, then the rows past the cap go (before rewriting the rest: a table grown without
bound on a nearly full card is not copied whole into the write-ahead log)."""
SCHEMA_V4: Final = """
CREATE TABLE lan_redemptions (
    voucher_id  TEXT NOT NULL,                                 -- redeemed at a peer (the shop LAN)
    device_id   TEXT NOT NULL,                                 -- the peer that redeemed it (and signed)
    redeemed_at REAL NOT NULL,                                 -- its trusted time then
    deal        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,                              -- its number in the peer's ledger
    received_at REAL NOT NULL,
    PRIMARY KEY (voucher_id, device_id)
) WITHOUT ROWID;
CREATE TABLE lan_peers (
    device_id  TEXT PRIMARY KEY,                               -- a peer heard from on the LAN
    epoch      TEXT NOT NULL DEFAULT '',                       -- its ledger's identity (new ledger: new id)
    watermark  INTEGER NOT NULL DEFAULT 0,                     -- its seq up to which its records are held
    address    TEXT,                                           -- where it was last heard from
    last_heard REAL,
    received   INTEGER NOT NULL DEFAULT 0,                     -- records of it recorded here
    sent       INTEGER NOT NULL DEFAULT 0                      -- records of this device sent to it
) WITHOUT ROWID;
"""
SCHEMA_V5: Final = """
ALTER TABLE lan_peers ADD COLUMN heard_start INTEGER NOT NULL DEFAULT 0;  -- its last message's start number
ALTER TABLE lan_peers ADD COLUMN heard_count INTEGER NOT NULL DEFAULT 0;  -- and its count in that start
"""
"""The last message heard from each peer (``Lan``: an older one is a replay, whenever it was made)."""
MIGRATIONS: Final = (SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5)
"""The schema step by step: ``MIGRATIONS[n]`` takes a ledger from version n to n + 1."""
_NEXT_SEQ: Final = """
INSERT INTO state (name, value) VALUES ('redemption_seq', '1') ON CONFLICT (name)
DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) RETURNING CAST(value AS INTEGER)
"""
_INSERT_REDEMPTION: Final = """
INSERT INTO redemptions
    (voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user, merchant, expires_at, seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (voucher_id) DO NOTHING
"""
_REDEMPTION_COLUMNS: Final = (
    "voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user, merchant, expires_at, result,"
    " synced_at, seq, backend_status, first_device_id, first_redeemed_at"
)
_INSERT_REJECTION: Final = """
INSERT INTO rejections (nonce, device_id, scanned_at, clock_at, result, voucher_id, deal, raw, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_COUNT_REJECTION: Final = """
INSERT INTO rejection_counts (result, count) VALUES (?, 1)
ON CONFLICT (result) DO UPDATE SET count = count + 1
"""


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """Syncs the backend keeps refusing: since the first refusal, with the latest reason. Kept in the
    ledger because ``status`` runs in another process than the sync that was refused."""

    since: float
    reason: str


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
    seq: int
    backend_status: str | None = None
    """The backend's verdict once synced: ``ok``, or ``conflict`` (another device redeemed it first)."""
    first_device_id: str | None = None
    first_redeemed_at: float | None = None


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


@dataclass(frozen=True, slots=True)
class StoredKeys:
    """The key set in force and what is known of its freshness."""

    keys: KeySet
    version: int
    """Changes whenever the stored key set or its window does: a running counter reloads then."""
    issued_at: float | None
    valid_until: float | None
    """Past it the key set is stale (the device should have synced); ``None``: seeded from the
    ``keyset`` file, which says nothing of freshness."""


@dataclass(frozen=True, slots=True)
class BackendVerdict:
    """The backend's word on one uploaded redemption (docs/backend-api.md, "One sync")."""

    voucher_id: str
    status: str
    first_device_id: str | None = None
    first_redeemed_at: float | None = None


@dataclass(frozen=True, slots=True)
class TrustPin:
    """The trust key that signed a sync answer, and the bundle's pin whose chain led to it."""

    origin: VerificationKey
    key: VerificationKey


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """What one sync round trip brought, applied to the ledger at once (``Ledger.apply_sync``)."""

    uploaded_through: int
    """The ``seq`` of the last redemption the answer confirmed: the new upload watermark."""
    verdicts: Sequence[BackendVerdict]
    keys: KeySet
    keys_issued_at: float
    keys_valid_until: float
    revoked_vouchers: Sequence[str]
    revoked_deals: Sequence[str]
    revocations_watermark: str | None
    peers: dict[str, dict[str, Any]]
    """device id -> its public Ed25519 JWK."""
    server_time: float
    trust: TrustPin | None = None
    """Where the pin moves (a new trust key announced by the pinned one), kept with the rest."""


class Ledger(Closing):
    """One SQLite ledger file; open one per thread (several may share the file).

    ``read_only`` (for ``status``) never writes, so it also reads a ledger on a read-only
    filesystem or in a folder this user may not write. ``max_rejections`` caps the rejection rows.
    ``device_id``: the ledger is this device's; the first device to open it writably records its
    id, and any other is refused (``LedgerOfAnotherDevice``).
    """

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
                seq = db.execute(_NEXT_SEQ).fetchone()[0]
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
                        seq,
                    ),
                ).rowcount
                if inserted:
                    return verdict
                verdict = Verdict(Reason.ALREADY_REDEEMED, voucher, "redeemed a moment ago (race)")
            self._add_rejection(db, verdict, raw, device_id, scanned_at, clock_at)
        return verdict

    def _add_rejection(
        self,
        db: sqlite3.Connection,
        verdict: Verdict,
        raw: str,
        device_id: str,
        scanned_at: float | None,
        clock_at: float,
    ) -> None:
        """One rejection row (the code's fingerprint; a genuine voucher's id and deal), its count,
        and the oldest rows past ``max_rejections`` let go, all in the scan's transaction."""
        voucher = verdict.voucher
        detail = safe_code(verdict.detail)
        row = (
            uuid.uuid4().hex,
            device_id,
            scanned_at,
            clock_at,
            str(verdict.reason),
            voucher.voucher_id if voucher else None,
            voucher.deal if voucher else None,
            fingerprint(raw),
            detail if len(detail) <= MAX_DETAIL_LENGTH else detail[: MAX_DETAIL_LENGTH - 3] + "...",
        )
        added = db.execute(_INSERT_REJECTION, row).lastrowid
        db.execute(_COUNT_REJECTION, (str(verdict.reason),))
        if added is not None:  # ids only grow while the newest row stays: the oldest have the lowest
            db.execute("DELETE FROM rejections WHERE id <= ?", (added - self.max_rejections,))

    # -- time -------------------------------------------------------------------------------

    def _state(self, name: str) -> str | None:
        value = self._one("SELECT value FROM state WHERE name = ?", name)
        return None if value is None else str(value)

    def _number(self, name: str) -> float | None:
        value = self._state(name)
        return None if value is None else float(value)

    @property
    def time_floor(self) -> float | None:
        return self._number("time_floor")

    @property
    def last_sync(self) -> float | None:
        """The server's time at the last sync."""
        return self._number("last_sync")

    def _raise_floor(self, db: sqlite3.Connection, moment: float) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES ('time_floor', ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(state.value AS REAL)",
            (repr(float(moment)),),
        )

    def raise_floor(self, moment: float) -> None:
        """Note that ``moment`` has passed (only a sync sets the floor down)."""
        with self._write() as db:
            self._raise_floor(db, moment)

    def note_sync(self, server_time: float) -> None:
        """A sync's server time: the last sync, and the floor, set down as well as up."""
        with self._write() as db:
            self._note_sync(db, server_time)

    def _note_sync(self, db: sqlite3.Connection, server_time: float) -> None:
        """The floor becomes the server's time, but never less than ``pruned_through``: a redemption
        let go was of a voucher expired by then, and must stay refused (as ``expired``)."""
        kept = self._one("SELECT value FROM state WHERE name = 'pruned_through'")
        floor = max(float(server_time), float(kept) if kept is not None else float(server_time))
        self._set(db, "time_floor", repr(floor))
        self._set(db, "last_sync", repr(float(server_time)))

    @property
    def sync_failure(self) -> SyncFailure | None:
        """The refusal the last sync ended with, until a sync succeeds."""
        value = self._state("sync_failure")
        if not value:
            return None
        stored = json.loads(value)
        return SyncFailure(float(stored["since"]), str(stored["reason"]))

    def note_sync_failure(self, reason: str, at: float) -> SyncFailure:
        """A refused sync: ``since`` stays the first refusal's time while refusals go on."""
        with self._write() as db:
            earlier = self.sync_failure
            failure = SyncFailure(earlier.since if earlier else at, reason)
            self._set(db, "sync_failure", json.dumps({"since": failure.since, "reason": failure.reason}))
            return failure

    def clear_sync_failure(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM state WHERE name = 'sync_failure'")

    # -- keys, revocations and peers --------------------------------------------------------

    def _set(self, db: sqlite3.Connection, name: str, value: str) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _store_keyset(
        self,
        db: sqlite3.Connection,
        keys: KeySet,
        loaded_at: float,
        issued_at: float | None = None,
        valid_until: float | None = None,
    ) -> bool:
        """Replace the key set (and its window) when it differs; return whether it did."""
        wanted = {
            "keyset": keys.to_json(),
            "keyset_issued_at": "" if issued_at is None else repr(float(issued_at)),
            "keyset_valid_until": "" if valid_until is None else repr(float(valid_until)),
        }
        stored = dict(db.execute("SELECT name, value FROM state WHERE name IN (?, ?, ?)", tuple(wanted)))
        if stored == wanted:
            return False
        for name, value in wanted.items():
            self._set(db, name, value)
        self._set(db, "keyset_loaded_at", repr(float(loaded_at)))
        self._set(db, "keyset_version", str(self.keyset_version() + 1))
        return True

    def store_keyset(
        self, keys: KeySet, loaded_at: float, issued_at: float | None = None, valid_until: float | None = None
    ) -> bool:
        """Replace the key set in force, at once for every reader; return whether it changed."""
        with self._write() as db:
            return self._store_keyset(db, keys, loaded_at, issued_at, valid_until)

    def seed_keyset(self, keys: KeySet, loaded_at: float) -> bool:
        """Store ``keys`` (the ``keyset`` file) only if the ledger holds no key set yet: after
        that the ledger is the one source, and only a sync replaces it."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM state WHERE name = 'keyset'").fetchone():
                return False
            return self._store_keyset(db, keys, loaded_at)

    def keyset_version(self) -> int:
        """Cheap to ask before every scan: a new number means a new key set to load."""
        return int(self._state("keyset_version") or 0)

    def keyset(self) -> KeySet | None:
        text = self._state("keyset")
        return None if text is None else KeySet.from_jwks(text)

    def stored_keys(self) -> StoredKeys | None:
        """The key set in force with its version and window, read in one statement (consistent)."""
        names = ("keyset", "keyset_version", "keyset_issued_at", "keyset_valid_until")
        rows = dict(self._db.execute("SELECT name, value FROM state WHERE name IN (?, ?, ?, ?)", names))
        if "keyset" not in rows:
            return None

        def moment(name: str) -> float | None:
            return float(rows[name]) if rows.get(name) else None

        return StoredKeys(
            KeySet.from_jwks(rows["keyset"]),
            int(rows.get("keyset_version") or 0),
            moment("keyset_issued_at"),
            moment("keyset_valid_until"),
        )

    def _revoke(
        self, db: sqlite3.Connection, vouchers: Iterable[str], deals: Iterable[str], at: float | None
    ) -> None:
        rows = [("voucher", v, at) for v in vouchers] + [("deal", d, at) for d in deals]
        db.executemany("INSERT OR IGNORE INTO revocations (kind, value, revoked_at) VALUES (?, ?, ?)", rows)

    def revoke(
        self, *, vouchers: Iterable[str] = (), deals: Iterable[str] = (), at: float | None = None
    ) -> None:
        with self._write() as db:
            self._revoke(db, vouchers, deals, at)

    def revocation_count(self) -> int:
        return int(self._one("SELECT count(*) FROM revocations"))

    @property
    def revocations_watermark(self) -> str | None:
        """The backend's watermark of the revocations this ledger holds (``revocations_after``)."""
        return self._state("revocations_watermark") or None

    def peers(self) -> dict[str, dict[str, Any]]:
        """The merchant's other counters, by device id, with their public keys (from the last sync)."""
        rows = self._db.execute("SELECT device_id, public_key FROM peers ORDER BY device_id")
        return {device_id: json.loads(jwk) for device_id, jwk in rows}

    def trust_key(self, pinned: VerificationKey) -> VerificationKey:
        """The trust key in force: where syncs moved the pin from ``pinned`` (the bundle's), or
        ``pinned`` itself (also when the bundle pins another key than the one they started from:
        a device enrolled again starts again from its new bundle)."""
        rows = dict(
            self._db.execute("SELECT name, value FROM state WHERE name IN ('trust_origin', 'trust_key')")
        )
        if rows.get("trust_origin") != _jwk_text(pinned) or "trust_key" not in rows:
            return pinned
        return VerificationKey.from_jwk(json.loads(rows["trust_key"]))

    # -- sync -------------------------------------------------------------------------------

    @property
    def upload_watermark(self) -> int:
        """The ``seq`` of the last redemption the backend confirmed; later ones wait for upload."""
        return int(self._state("uploaded_through") or 0)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last redemption recorded."""
        return int(self._state("redemption_seq") or 0)

    def to_upload(self, *, limit: int, through: int | None = None) -> list[Redemption]:
        """The next ``limit`` redemptions after the upload watermark (up to ``through``), in order."""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (self.upload_watermark, self.last_seq if through is None else through, limit),
        )
        return [Redemption(*row) for row in rows]

    def apply_sync(self, record: SyncRecord, leeway: float) -> int:
        """Everything one sync brought, in one transaction; return how many rows were let go.

        The backend's verdicts are kept beside the redemptions (the verdict the counter gave is
        never changed); the upload watermark moves on; the key set is replaced whole (a key the
        backend retired leaves); revocations are added; peers replaced; the server's time sets
        the floor and decides which synced rows are no longer needed; the trust pin moves.
        """
        with self._write() as db:
            floor_before = self.time_floor
            db.executemany(
                "UPDATE redemptions SET synced_at = ?, backend_status = ?, first_device_id = ?,"
                " first_redeemed_at = ? WHERE voucher_id = ?",
                [
                    (record.server_time, v.status, v.first_device_id, v.first_redeemed_at, v.voucher_id)
                    for v in record.verdicts
                ],
            )
            if record.uploaded_through > self.upload_watermark:
                self._set(db, "uploaded_through", str(record.uploaded_through))
            self._store_keyset(
                db, record.keys, record.server_time, record.keys_issued_at, record.keys_valid_until
            )
            self._revoke(db, record.revoked_vouchers, record.revoked_deals, record.server_time)
            self._set(db, "revocations_watermark", record.revocations_watermark or "")
            db.execute("DELETE FROM peers")
            db.executemany(
                "INSERT INTO peers (device_id, public_key) VALUES (?, ?)",
                [(device, json.dumps(jwk, sort_keys=True)) for device, jwk in record.peers.items()],
            )
            if record.trust is not None:
                self._set(db, "trust_origin", _jwk_text(record.trust.origin))
                self._set(db, "trust_key", _jwk_text(record.trust.key))
            self._note_sync(db, record.server_time)
            if floor_before is None:
                return 0  # no time was trusted before this answer: it alone lets nothing go
            return self._prune(db, min(record.server_time, floor_before), record.server_time, leeway)

    def _prune(self, db: sqlite3.Connection, trusted: float, server_time: float, leeway: float) -> int:
        """Let go of synced redemptions whose voucher expired by ``trusted`` (they can only be
        ``expired`` now), remembering the latest such expiry in ``pruned_through`` so that no later
        sync sets the floor below it; and of rejections older than 30 days by the server's time.

        ``trusted`` is the server's time, but no later than the floor before this answer: a sync
        that moved the floor far forward lets go of nothing the old floor did not already refuse
        as expired, so if the backend's clock was wrong, its next (corrected) answer sets the
        floor back and every redemption is still there to say ``already_redeemed``."""
        horizon = db.execute(
            "SELECT max(expires_at) + ? FROM redemptions WHERE synced_at IS NOT NULL AND expires_at < ?",
            (leeway, trusted - leeway),
        ).fetchone()[0]
        self._set(db, "prune_time", repr(float(trusted)))
        gone = 0
        if horizon is not None:
            kept = self._one("SELECT value FROM state WHERE name = 'pruned_through'")
            self._set(db, "pruned_through", repr(max(float(horizon), float(kept or 0))))
            gone = db.execute(
                "DELETE FROM redemptions WHERE synced_at IS NOT NULL AND expires_at < ?",
                (trusted - leeway,),
            ).rowcount
        gone += db.execute(
            "DELETE FROM rejections WHERE coalesce(scanned_at, clock_at) < ?",
            (server_time - REJECTION_RETENTION_SECONDS,),
        ).rowcount
        return gone

    # -- status -----------------------------------------------------------------------------

    def accepted_count(self) -> int:
        return int(self._one("SELECT count(*) FROM redemptions"))

    def rejected_counts(self) -> dict[str, int]:
        """Every rejection ever recorded here, by reason: exact, whatever rows the cap let go."""
        rows = self._db.execute("SELECT result, count FROM rejection_counts ORDER BY result")
        return {result: count for result, count in rows}

    def unsynced_count(self) -> int:
        """Redemptions the backend has not confirmed yet (rejections stay on the device)."""
        return int(self._one("SELECT count(*) FROM redemptions WHERE seq > ?", self.upload_watermark))

    def redemptions(self, *, unsynced_only: bool = False, limit: int = -1) -> list[Redemption]:
        where = "WHERE synced_at IS NULL" if unsynced_only else ""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions {where} ORDER BY seq LIMIT ?", (limit,)
        )
        return [Redemption(*row) for row in rows]

    def conflicts(self, limit: int = -1) -> list[Redemption]:
        """Redemptions the backend says another device made first, latest first."""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions WHERE backend_status = 'conflict'"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [Redemption(*row) for row in rows]

    def conflict_count(self) -> int:
        return int(self._one("SELECT count(*) FROM redemptions WHERE backend_status = 'conflict'"))

    def rejections(self, *, limit: int = -1) -> list[Rejection]:
        rows = self._db.execute("SELECT * FROM rejections ORDER BY id LIMIT ?", (limit,))
        return [Rejection(*row) for row in rows]

    # -- the shop LAN (shopcardd_device.lan) ------------------------------------------------

    def lan_connection(self) -> None:
        """Make this connection's commits cheap (``synchronous = NORMAL``): the LAN thread's writes
        (records of peers, when they were heard) may be lost in a power cut, and the catch-up
        fetches them again; the scan's own commits, on their own connection, stay FULL."""
        self._db.execute("PRAGMA synchronous = NORMAL")

    def lan_epoch(self) -> str:
        """This ledger's identity on the LAN, made once: a peer that sees it change (a new ledger
        under the same device id, whose numbers start again at 1) starts its watermark over."""
        with self._write() as db:
            db.execute(
                "INSERT INTO state (name, value) VALUES ('lan_epoch', ?) ON CONFLICT (name) DO NOTHING",
                (uuid.uuid4().hex[:16],),
            )
        return str(self._state("lan_epoch"))

    def lan_start(self, now: float) -> int:
        """This start's number on the LAN, above every earlier one of this ledger (so above what a
        recorded message of an earlier process carries) and not below ``now``, the seconds of the
        trusted time: a ledger made anew under the same device id starts above the old one's
        numbers, which its peers still hold. Committed (fsynced) before the first message is sent."""
        with self._write() as db:
            row = db.execute("SELECT value FROM state WHERE name = 'lan_start'").fetchone()
            start = max(0 if row is None else int(row[0]), int(now) - 1) + 1
            self._set(db, "lan_start", str(start))
        return start

    def lan_heard(self) -> dict[str, tuple[int, int]]:
        """Each peer's last message heard: (its start number, its count in that start)."""
        rows = self._db.execute("SELECT device_id, heard_start, heard_count FROM lan_peers")
        return {str(device): (int(start), int(count)) for device, start, count in rows}

    def own_records(self, after: int, *, max_rows: int) -> tuple[list[LanRecord], int]:
        """This device's redemptions numbered after ``after`` (at most ``max_rows``, in order) and the
        number they run through: the last row's when cut short, else the last number given, so a
        peer's watermark passes the gaps (a lost race, a row let go) too. One read transaction."""
        self._db.execute("BEGIN")
        try:
            rows = self._db.execute(
                "SELECT voucher_id, deal, redeemed_at, expires_at, seq FROM redemptions"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, max_rows),
            ).fetchall()
            last = self.last_seq
        finally:
            self._db.execute("COMMIT")
        through = rows[-1][4] if len(rows) == max_rows else max(last, after)
        return [LanRecord(*row) for row in rows], through

    def note_peer(
        self,
        device_id: str,
        *,
        epoch: str,
        address: str,
        heard_at: float,
        counter: tuple[int, int],
        records: Sequence[LanRecord] = (),
        span: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """A verified message of peer ``device_id``: when and where it was heard, its ``counter``
        (start number, count: the last heard, kept across restarts of either counter), and its
        ``records`` (kept once: a replay changes nothing). ``span`` (after, through) says the records
        are all the peer has numbered in that range: when this ledger already holds the peer's records
        up to ``after``, its watermark moves on to ``through``. Returns (records new here, watermark)."""
        with self._write() as db:
            row = db.execute(
                "SELECT epoch, watermark FROM lan_peers WHERE device_id = ?", (device_id,)
            ).fetchone()
            watermark = 0 if row is None or row[0] != epoch else int(row[1])
            inserted = 0
            for record in records:
                inserted += db.execute(
                    "INSERT INTO lan_redemptions (voucher_id, device_id, redeemed_at, deal, expires_at, seq,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        record.voucher_id,
                        device_id,
                        record.redeemed_at,
                        record.deal,
                        record.expires_at,
                        record.seq,
                        heard_at,
                    ),
                ).rowcount
            if span is not None and span[0] <= watermark:
                watermark = max(watermark, span[1])
            db.execute(
                "INSERT INTO lan_peers (device_id, epoch, watermark, address, last_heard, received,"
                " heard_start, heard_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id)"
                " DO UPDATE SET epoch = excluded.epoch, watermark = excluded.watermark,"
                " address = excluded.address, last_heard = excluded.last_heard,"
                " received = received + excluded.received, heard_start = excluded.heard_start,"
                " heard_count = excluded.heard_count",
                (device_id, epoch, watermark, address, heard_at, inserted, *counter),
            )
        return inserted, watermark

    def note_sent(self, counts: dict[str, int]) -> None:
        """Add to the records sent to each peer (for ``status``)."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO lan_peers (device_id, sent) VALUES (?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET sent = sent + excluded.sent",
                list(counts.items()),
            )

    def redeemed_by_peer(self, voucher_id: str) -> tuple[str, float] | None:
        """The peer that redeemed the voucher first, by its record, and when; only records of the
        merchant's current counters count (a device revoked since is no longer believed)."""
        row = self._db.execute(
            "SELECT r.device_id, r.redeemed_at FROM lan_redemptions AS r JOIN peers AS p USING (device_id)"
            " WHERE r.voucher_id = ? ORDER BY r.redeemed_at LIMIT 1",
            (voucher_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def lan_peers(self) -> list[LanPeer]:
        """Every peer heard from or sent to on the LAN, by device id."""
        rows = self._db.execute(
            "SELECT device_id, address, last_heard, received, sent, watermark FROM lan_peers"
            " ORDER BY device_id"
        )
        return [LanPeer(*row) for row in rows]

    @property
    def prune_time(self) -> float | None:
        """The time by which the last sync let expired redemptions go (``_prune``): the server's,
        never past the floor that stood before that answer."""
        return self._number("prune_time")

    def prune_lan(self, server_time: float, leeway: float) -> int:
        """Let go of peers' records of vouchers expired by a sync's time (``prune_time``; never by
        the clock's word, as for the ledger's own redemptions): such a voucher can only be
        ``expired`` now."""
        with self._write() as db:
            return int(
                db.execute(
                    "DELETE FROM lan_redemptions WHERE expires_at < ?", (server_time - leeway,)
                ).rowcount
            )


def _jwk_text(key: VerificationKey) -> str:
    return json.dumps(key.to_jwk(), sort_keys=True)


@dataclass(frozen=True, slots=True)
class LanRecord:
    """One redemption as the LAN gossip carries it (``shopcardd_device.gossip``): no user id."""

    voucher_id: str
    deal: str
    redeemed_at: float
    expires_at: int
    seq: int


@dataclass(frozen=True, slots=True)
class LanPeer:
    """What ``status`` shows of one peer on the LAN."""

    device_id: str
    address: str | None
    last_heard: float | None
    received: int
    sent: int
    watermark: int


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (``executescript`` would commit first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:60]!r}")
