"""The embedded document store: merchants, deals and vouchers in one SQLite file.

Opened through ``storage.py`` (WAL, ``synchronous=FULL``, busy timeout, a lock for the
threads of one process), so several API processes may share the file. Times are stored as
ISO 8601 text in UTC with milliseconds, which also sorts in time order. Tables mirror the
Mongo collections: ``merchants`` (``api_key_hash`` unique), ``deals`` (indexed by merchant),
``vouchers`` (indexed by deal; one voucher per deal, user and idempotency key),
``claim_tallies`` (one row per event, indexed by deal and minute), ``notices`` (one row per
voucher and channel taken, with its deal and outcome, indexed by deal); for device sync
``devices``, ``redemptions`` (one per voucher and device), ``revocations`` (numbered per
merchant) and ``used_device_tokens``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..storage import Closing, SqliteFile, add_missing_columns
from .base import (
    CLAIM_COUNTS,
    ClaimTally,
    ConsoleSession,
    DealPage,
    DealRecord,
    DealStatus,
    DeviceActivity,
    DeviceRecord,
    DeviceStatus,
    DuplicateError,
    MerchantRecord,
    MinuteCounts,
    NoticeCounts,
    NoticeOutcome,
    Record,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    StoreUnavailable,
    VoucherCounts,
    VoucherRecord,
    deal_page,
    first_redemption,
    notice_counts,
    parse_deal_cursor,
    record_fields,
    record_from_fields,
    utc_ms,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id TEXT PRIMARY KEY,
    api_key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deals (
    deal_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    title TEXT NOT NULL,
    stock INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    voucher_ttl_seconds INTEGER NOT NULL,
    starts_at TEXT,
    ends_at TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deals_by_merchant_newest ON deals (merchant_id, created_at, deal_id);
CREATE TABLE IF NOT EXISTS vouchers (
    voucher_id TEXT PRIMARY KEY,
    deal_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    UNIQUE (deal_id, user_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS vouchers_by_deal ON vouchers (deal_id, issued_at);
CREATE TABLE IF NOT EXISTS claim_tallies (
    event_id TEXT PRIMARY KEY,
    deal_id TEXT NOT NULL,
    minute TEXT NOT NULL,
    issued INTEGER NOT NULL,
    sold_out INTEGER NOT NULL,
    limit_reached INTEGER NOT NULL,
    sale_not_open INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS claim_tallies_by_deal ON claim_tallies (deal_id, minute);
CREATE TABLE IF NOT EXISTS notices (
    voucher_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    deal_id TEXT,
    outcome TEXT,
    PRIMARY KEY (voucher_id, channel)
);
"""
NOTICE_COLUMNS_ADDED = {"deal_id": "TEXT", "outcome": "TEXT"}
"""Columns a ``notices`` table made by an older version lacks; added at opening (its notices
keep no deal, so they are counted in no deal's figures)."""
NOTICE_INDEXES = """
CREATE INDEX IF NOT EXISTS notices_by_deal ON notices (deal_id, channel, outcome);
"""
DEVICE_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    status TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS devices_by_merchant ON devices (merchant_id, device_id);
CREATE UNIQUE INDEX IF NOT EXISTS one_device_per_key ON devices (json_extract(public_key, '$.x'));
CREATE TABLE IF NOT EXISTS redemptions (
    voucher_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    redeemed_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    user_id TEXT,
    expires_at TEXT,
    PRIMARY KEY (voucher_id, device_id)
);
CREATE INDEX IF NOT EXISTS redemptions_by_merchant ON redemptions (merchant_id, voucher_id);
CREATE TABLE IF NOT EXISTS revocations (
    merchant_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    PRIMARY KEY (merchant_id, seq),
    UNIQUE (merchant_id, kind, target_id)
);
CREATE TABLE IF NOT EXISTS used_device_tokens (
    token_key TEXT PRIMARY KEY,
    keep_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS used_device_tokens_by_time ON used_device_tokens (keep_until);
"""
MERCHANT_VIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_syncs (
    device_id TEXT PRIMARY KEY,
    last_sync_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS redemptions_by_deal ON redemptions (deal_id, voucher_id);
CREATE TABLE IF NOT EXISTS retired_api_keys (
    api_key_hash TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    valid_until TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_time ON console_sessions (expires_at);
"""


JSON_COLUMNS = frozenset({"public_key"})
"""Columns holding a JSON object (a device's public JWK) as text."""


def _row(record: Any) -> dict[str, Any]:
    row = record_fields(record)
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = _stamp(value)
        elif name in JSON_COLUMNS:
            row[name] = json.dumps(value, sort_keys=True)
    return row


def _stamp(value: datetime) -> str:
    return utc_ms(value).isoformat(timespec="milliseconds")


def _record(kind: type[Record], row: sqlite3.Row) -> Record:
    values = {
        name: datetime.fromisoformat(row[name]) if name.endswith("_at") and row[name] else row[name]
        for name in row.keys()  # noqa: SIM118 (a Row is not a dict)
    }
    for name in JSON_COLUMNS & values.keys():
        values[name] = json.loads(values[name])
    return record_from_fields(kind, values)


def _insert(table: str, row: dict[str, Any]) -> str:
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + name for name in row)})"


class SqliteDocumentStore(Closing):
    """``DocumentStore`` on one SQLite file."""

    def __init__(self, path: Path | str, busy_timeout: float = 5.0) -> None:
        self._db = SqliteFile(
            path, SCHEMA + DEVICE_SCHEMA + MERCHANT_VIEW_SCHEMA, StoreUnavailable, busy_timeout
        )
        with self._db.transaction() as tx:
            add_missing_columns(tx, "notices", NOTICE_COLUMNS_ADDED)
            tx.execute(NOTICE_INDEXES)

    def _add(self, table: str, record: Any) -> None:
        row = _row(record)
        try:
            with self._db.transaction() as tx:
                tx.execute(_insert(table, row), row)
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"{table}: {exc}") from exc

    def _add_new(self, table: str, records: Sequence[Any]) -> None:
        """Insert the records in one transaction; one whose key is taken is left as stored."""
        rows = [_row(record) for record in records]
        if rows:
            with self._db.transaction() as tx:
                tx.executemany(_insert(table, rows[0]).replace("INSERT", "INSERT OR IGNORE", 1), rows)

    def _one(self, kind: type[Record], sql: str, *args: Any) -> Record | None:
        with self._db.reading() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else _record(kind, row)

    def add_merchant(self, merchant: MerchantRecord) -> None:
        self._add("merchants", merchant)

    def merchant_for_key_hash(self, api_key_hash: str, now: datetime | None = None) -> str | None:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT merchant_id FROM merchants WHERE api_key_hash = ? UNION ALL "
                "SELECT merchant_id FROM retired_api_keys WHERE api_key_hash = ? AND valid_until > ?",
                (api_key_hash, api_key_hash, _stamp(now or datetime.now(UTC))),
            ).fetchone()
        return None if row is None else row[0]

    def add_deal(self, deal: DealRecord) -> None:
        self._add("deals", deal)

    def get_deal(self, deal_id: str) -> DealRecord | None:
        return self._one(DealRecord, "SELECT * FROM deals WHERE deal_id = ?", deal_id)

    def deals_of_merchant(self, merchant_id: str, limit: int, after: str | None = None) -> DealPage:
        where, args = "merchant_id = ?", [merchant_id]
        if after is not None:
            created_at, deal_id = parse_deal_cursor(after)
            stamp = created_at.isoformat(timespec="milliseconds")
            where += " AND (created_at < ? OR (created_at = ? AND deal_id < ?))"
            args += [stamp, stamp, deal_id]
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT * FROM deals WHERE {where} ORDER BY created_at DESC, deal_id DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return deal_page([_record(DealRecord, row) for row in rows], limit)

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE deals SET status = ? WHERE deal_id = ?", (str(status), deal_id))
            row = tx.execute("SELECT * FROM deals WHERE deal_id = ?", (deal_id,)).fetchone()
        return None if row is None else _record(DealRecord, row)

    def save_voucher(self, voucher: VoucherRecord) -> bool:
        try:
            self._add("vouchers", voucher)
            return True
        except DuplicateError:
            existing = self._one(
                VoucherRecord, "SELECT * FROM vouchers WHERE voucher_id = ?", voucher.voucher_id
            )
            if existing is not None and record_fields(existing) == record_fields(voucher):
                return False
            raise DuplicateError(
                f"voucher {voucher.voucher_id} (or its idempotency key) exists otherwise"
            ) from None

    def save_vouchers(self, vouchers: Sequence[VoucherRecord]) -> list[str]:
        if not vouchers:
            return []
        self._add_new("vouchers", vouchers)
        return self._differing(vouchers)

    def _differing(self, vouchers: Sequence[VoucherRecord]) -> list[str]:
        """The vouchers whose id is stored with other contents, or not stored at all (their
        claim holds another voucher)."""
        wanted = {v.voucher_id: record_fields(v) for v in vouchers}
        ids = list(wanted)
        found: dict[str, dict[str, Any]] = {}
        with self._db.reading() as conn:
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start : start + 500]
                sql = f"SELECT * FROM vouchers WHERE voucher_id IN ({', '.join('?' * len(chunk))})"
                for row in conn.execute(sql, chunk):
                    found[row["voucher_id"]] = record_fields(_record(VoucherRecord, row))
        return [voucher_id for voucher_id, fields in wanted.items() if found.get(voucher_id) != fields]

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM vouchers WHERE deal_id = ? ORDER BY issued_at, voucher_id", (deal_id,)
            ).fetchall()
        return [_record(VoucherRecord, row) for row in rows]

    def add_claim_tallies(self, tallies: Sequence[ClaimTally]) -> None:
        self._add_new("claim_tallies", tallies)

    def claims_by_minute(self, deal_id: str) -> list[MinuteCounts]:
        sums = ", ".join(f"SUM({name})" for name in CLAIM_COUNTS)
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT minute, {sums} FROM claim_tallies WHERE deal_id = ? GROUP BY minute ORDER BY minute",
                (deal_id,),
            ).fetchall()
        return [MinuteCounts(datetime.fromisoformat(minute), *counts) for minute, *counts in rows]

    def claim_notice(self, voucher_id: str, channel: str, deal_id: str) -> bool:
        with self._db.transaction() as tx:
            taken = tx.execute(
                "INSERT OR IGNORE INTO notices (voucher_id, channel, taken_at, deal_id) VALUES (?, ?, ?, ?)",
                (voucher_id, channel, _stamp(datetime.now(UTC)), deal_id),
            )
        return taken.rowcount == 1

    def release_notice(self, voucher_id: str, channel: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM notices WHERE voucher_id = ? AND channel = ?", (voucher_id, channel))

    def record_notice(self, voucher_id: str, channel: str, outcome: NoticeOutcome) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE notices SET outcome = ? WHERE voucher_id = ? AND channel = ?",
                (str(outcome), voucher_id, channel),
            )

    def notices_of(self, deal_id: str) -> dict[str, NoticeCounts]:
        with self._db.reading() as conn:  # the index by (deal_id, channel, outcome) covers it
            rows = conn.execute(
                "SELECT channel, outcome, COUNT(*) FROM notices "
                "WHERE deal_id = ? AND outcome IS NOT NULL GROUP BY channel, outcome",
                (deal_id,),
            ).fetchall()
        return notice_counts(rows)

    # --- Devices, redemptions, revocations and used device-token ids (device enrolment and sync) ---

    def add_device(self, device: DeviceRecord) -> None:
        self._add("devices", device)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        return self._one(DeviceRecord, "SELECT * FROM devices WHERE device_id = ?", device_id)

    def set_device_status(self, device_id: str, status: DeviceStatus, at: datetime) -> DeviceRecord | None:
        revoked_at = _stamp(at) if status is DeviceStatus.REVOKED else None
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE devices SET status = ?, revoked_at = CASE WHEN ? IS NULL THEN NULL "
                "ELSE COALESCE(revoked_at, ?) END WHERE device_id = ?",
                (str(status), revoked_at, revoked_at, device_id),
            )
            row = tx.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else _record(DeviceRecord, row)

    def devices_of_merchant(self, merchant_id: str) -> Sequence[DeviceRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM devices WHERE merchant_id = ? ORDER BY device_id", (merchant_id,)
            ).fetchall()
        return [_record(DeviceRecord, row) for row in rows]

    def use_token_id(self, device_id: str, token_id: str, keep_until: datetime, now: datetime) -> bool:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM used_device_tokens WHERE keep_until < ?", (_stamp(now),))
            inserted = tx.execute(
                "INSERT OR IGNORE INTO used_device_tokens (token_key, keep_until) VALUES (?, ?)",
                (f"{device_id} {token_id}", _stamp(keep_until)),
            )
        return inserted.rowcount == 1

    def save_redemptions(self, redemptions: Sequence[RedemptionRecord]) -> dict[str, RedemptionRecord]:
        if not redemptions:
            return {}
        rows = [_row(redemption) for redemption in redemptions]
        merchant_id = redemptions[0].merchant_id
        ids = list({redemption.voucher_id for redemption in redemptions})
        found: dict[str, list[RedemptionRecord]] = {}
        with self._db.transaction() as tx:
            tx.executemany(_insert("redemptions", rows[0]).replace("INSERT", "INSERT OR IGNORE", 1), rows)
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start : start + 500]
                sql = (
                    "SELECT * FROM redemptions WHERE merchant_id = ? "
                    f"AND voucher_id IN ({', '.join('?' * len(chunk))})"
                )
                for row in tx.execute(sql, (merchant_id, *chunk)):
                    found.setdefault(row["voucher_id"], []).append(_record(RedemptionRecord, row))
        return {voucher_id: first_redemption(records) for voucher_id, records in found.items()}

    def count_redemptions(self, merchant_id: str) -> int:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM redemptions WHERE merchant_id = ?", (merchant_id,)
            ).fetchone()
        return int(row[0])

    def conflicts_of_merchant(
        self, merchant_id: str, limit: int, after: str | None = None
    ) -> list[list[RedemptionRecord]]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM redemptions WHERE merchant_id = ? AND voucher_id IN ("
                "  SELECT voucher_id FROM redemptions WHERE merchant_id = ? AND voucher_id > ?"
                "  GROUP BY voucher_id HAVING COUNT(*) > 1 ORDER BY voucher_id LIMIT ?)"
                " ORDER BY voucher_id, received_at, device_id",
                (merchant_id, merchant_id, after or "", limit),
            ).fetchall()
        grouped: dict[str, list[RedemptionRecord]] = {}
        for row in rows:
            grouped.setdefault(row["voucher_id"], []).append(_record(RedemptionRecord, row))
        return list(grouped.values())

    def add_revocation(
        self, merchant_id: str, kind: RevocationKind, target_id: str, at: datetime
    ) -> RevocationRecord:
        where = "WHERE merchant_id = ? AND kind = ? AND target_id = ?"
        with self._db.transaction() as tx:
            row = tx.execute(
                f"SELECT * FROM revocations {where}", (merchant_id, str(kind), target_id)
            ).fetchone()
            if row is None:
                (last,) = tx.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM revocations WHERE merchant_id = ?", (merchant_id,)
                ).fetchone()
                record = RevocationRecord(merchant_id, kind, target_id, at, last + 1)
                tx.execute(_insert("revocations", _row(record)), _row(record))
                row = tx.execute(
                    f"SELECT * FROM revocations {where}", (merchant_id, str(kind), target_id)
                ).fetchone()
        return _record(RevocationRecord, row)

    def revocations_after(self, merchant_id: str, after: int, limit: int) -> list[RevocationRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM revocations WHERE merchant_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (merchant_id, after, limit),
            ).fetchall()
        return [_record(RevocationRecord, row) for row in rows]

    def get_voucher(self, voucher_id: str) -> VoucherRecord | None:
        return self._one(VoucherRecord, "SELECT * FROM vouchers WHERE voucher_id = ?", voucher_id)

    # --- end of the device sync block ---

    # --- What the merchant reads, API key rotation, console sessions ---

    def vouchers_page(self, deal_id: str, limit: int, after: str | None = None) -> list[VoucherRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM vouchers WHERE deal_id = ? AND voucher_id > ? ORDER BY voucher_id LIMIT ?",
                (deal_id, after or "", limit),
            ).fetchall()
        return [_record(VoucherRecord, row) for row in rows]

    def voucher_counts(self, deal_id: str) -> VoucherCounts:
        with self._db.reading() as conn:
            (issued,) = conn.execute("SELECT COUNT(*) FROM vouchers WHERE deal_id = ?", (deal_id,)).fetchone()
            (redeemed,) = conn.execute(
                "SELECT COUNT(DISTINCT voucher_id) FROM redemptions WHERE deal_id = ?", (deal_id,)
            ).fetchone()
        return VoucherCounts(int(issued), int(redeemed))

    def redemptions_of_voucher(self, voucher_id: str) -> list[RedemptionRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM redemptions WHERE voucher_id = ? ORDER BY received_at, device_id",
                (voucher_id,),
            ).fetchall()
        return [_record(RedemptionRecord, row) for row in rows]

    def revocation_of(
        self, merchant_id: str, kind: RevocationKind, target_id: str
    ) -> RevocationRecord | None:
        return self._one(
            RevocationRecord,
            "SELECT * FROM revocations WHERE merchant_id = ? AND kind = ? AND target_id = ?",
            merchant_id,
            str(kind),
            target_id,
        )

    def record_sync(self, device_id: str, at: datetime) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO device_syncs (device_id, last_sync_at) VALUES (?, ?) ON CONFLICT (device_id) "
                "DO UPDATE SET last_sync_at = MAX(last_sync_at, excluded.last_sync_at)",
                (device_id, _stamp(at)),
            )

    def device_activity(self, merchant_id: str) -> dict[str, DeviceActivity]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT d.device_id, s.last_sync_at, "
                "  (SELECT COUNT(*) FROM redemptions r WHERE r.merchant_id = d.merchant_id "
                "   AND r.device_id = d.device_id) "
                "FROM devices d LEFT JOIN device_syncs s ON s.device_id = d.device_id "
                "WHERE d.merchant_id = ?",
                (merchant_id,),
            ).fetchall()
        return {
            device_id: DeviceActivity(
                device_id, utc_ms(datetime.fromisoformat(synced)) if synced else None, count
            )
            for device_id, synced, count in rows
            if synced or count
        }

    def rotate_api_key(self, merchant_id: str, new_key_hash: str, old_valid_until: datetime) -> bool:
        try:
            with self._db.transaction() as tx:
                row = tx.execute(
                    "SELECT api_key_hash FROM merchants WHERE merchant_id = ?", (merchant_id,)
                ).fetchone()
                if row is None:
                    return False
                tx.execute(
                    "INSERT OR REPLACE INTO retired_api_keys (api_key_hash, merchant_id, valid_until) "
                    "VALUES (?, ?, ?)",
                    (row[0], merchant_id, _stamp(old_valid_until)),
                )
                tx.execute(
                    "UPDATE merchants SET api_key_hash = ? WHERE merchant_id = ?", (new_key_hash, merchant_id)
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"merchants: {exc}") from exc
        return True

    def add_console_session(self, session: ConsoleSession) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE expires_at < ?", (_stamp(datetime.now(UTC)),))
        self._add("console_sessions", session)

    def console_session(self, session_hash: str, now: datetime) -> ConsoleSession | None:
        return self._one(
            ConsoleSession,
            "SELECT * FROM console_sessions WHERE session_hash = ? AND expires_at > ?",
            session_hash,
            _stamp(now),
        )

    def end_console_session(self, session_hash: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE session_hash = ?", (session_hash,))

    def check(self) -> None:
        with self._db.reading() as conn:
            conn.execute("SELECT 1 FROM merchants LIMIT 1").fetchall()

    def close(self) -> None:
        self._db.close()
