"""What the merchant reads, API key rotation and console sessions in SQLite: the
``MerchantViews`` port."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from ..base import (
    ConsoleSession,
    DeviceActivity,
    DuplicateError,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    VoucherCounts,
    VoucherRecord,
    utc_ms,
)
from .connection import SqliteConnection, as_record, as_stamp


class MerchantViewTables(SqliteConnection):
    """``MerchantViews`` on the store's tables, ``device_syncs``, ``retired_api_keys`` and
    ``console_sessions`` among them."""

    def vouchers_page(self, deal_id: str, limit: int, after: str | None = None) -> list[VoucherRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM vouchers WHERE deal_id = ? AND voucher_id > ? ORDER BY voucher_id LIMIT ?",
                (deal_id, after or "", limit),
            ).fetchall()
        return [as_record(VoucherRecord, row) for row in rows]

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
        return [as_record(RedemptionRecord, row) for row in rows]

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
                (device_id, as_stamp(at)),
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
                    (row[0], merchant_id, as_stamp(old_valid_until)),
                )
                tx.execute(
                    "UPDATE merchants SET api_key_hash = ? WHERE merchant_id = ?", (new_key_hash, merchant_id)
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"merchants: {exc}") from exc
        return True

    def add_console_session(self, session: ConsoleSession) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE expires_at < ?", (as_stamp(datetime.now(UTC)),))
        self._add("console_sessions", session)

    def console_session(self, session_hash: str, now: datetime) -> ConsoleSession | None:
        return self._one(
            ConsoleSession,
            "SELECT * FROM console_sessions WHERE session_hash = ? AND expires_at > ?",
            session_hash,
            as_stamp(now),
        )

    def end_console_session(self, session_hash: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM console_sessions WHERE session_hash = ?", (session_hash,))
