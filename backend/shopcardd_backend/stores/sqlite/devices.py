"""Devices, redemptions, revocations and used device-token ids in SQLite: the ``DeviceRecords``
port (device enrolment and sync)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..base import (
    DeviceRecord,
    DeviceStatus,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    VoucherRecord,
    first_redemption,
)
from .connection import SqliteConnection, as_record, as_row, as_stamp, insert_sql


class DeviceTables(SqliteConnection):
    """``DeviceRecords`` on the ``devices``, ``redemptions``, ``revocations`` and
    ``used_device_tokens`` tables."""

    def add_device(self, device: DeviceRecord) -> None:
        self._add("devices", device)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        return self._one(DeviceRecord, "SELECT * FROM devices WHERE device_id = ?", device_id)

    def set_device_status(self, device_id: str, status: DeviceStatus, at: datetime) -> DeviceRecord | None:
        revoked_at = as_stamp(at) if status is DeviceStatus.REVOKED else None
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE devices SET status = ?, revoked_at = CASE WHEN ? IS NULL THEN NULL "
                "ELSE COALESCE(revoked_at, ?) END WHERE device_id = ?",
                (str(status), revoked_at, revoked_at, device_id),
            )
            row = tx.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else as_record(DeviceRecord, row)

    def devices_of_merchant(self, merchant_id: str) -> Sequence[DeviceRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM devices WHERE merchant_id = ? ORDER BY device_id", (merchant_id,)
            ).fetchall()
        return [as_record(DeviceRecord, row) for row in rows]

    def use_token_id(self, device_id: str, token_id: str, keep_until: datetime, now: datetime) -> bool:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM used_device_tokens WHERE keep_until < ?", (as_stamp(now),))
            inserted = tx.execute(
                "INSERT OR IGNORE INTO used_device_tokens (token_key, keep_until) VALUES (?, ?)",
                (f"{device_id} {token_id}", as_stamp(keep_until)),
            )
        return inserted.rowcount == 1

    def save_redemptions(self, redemptions: Sequence[RedemptionRecord]) -> dict[str, RedemptionRecord]:
        if not redemptions:
            return {}
        rows = [as_row(redemption) for redemption in redemptions]
        merchant_id = redemptions[0].merchant_id
        ids = list({redemption.voucher_id for redemption in redemptions})
        found: dict[str, list[RedemptionRecord]] = {}
        with self._db.transaction() as tx:
            tx.executemany(insert_sql("redemptions", rows[0]).replace("INSERT", "INSERT OR IGNORE", 1), rows)
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start : start + 500]
                sql = (
                    "SELECT * FROM redemptions WHERE merchant_id = ? "
                    f"AND voucher_id IN ({', '.join('?' * len(chunk))})"
                )
                for row in tx.execute(sql, (merchant_id, *chunk)):
                    found.setdefault(row["voucher_id"], []).append(as_record(RedemptionRecord, row))
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
            grouped.setdefault(row["voucher_id"], []).append(as_record(RedemptionRecord, row))
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
                tx.execute(insert_sql("revocations", as_row(record)), as_row(record))
                row = tx.execute(
                    f"SELECT * FROM revocations {where}", (merchant_id, str(kind), target_id)
                ).fetchone()
        return as_record(RevocationRecord, row)

    def revocations_after(self, merchant_id: str, after: int, limit: int) -> list[RevocationRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM revocations WHERE merchant_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (merchant_id, after, limit),
            ).fetchall()
        return [as_record(RevocationRecord, row) for row in rows]

    def get_voucher(self, voucher_id: str) -> VoucherRecord | None:
        return self._one(VoucherRecord, "SELECT * FROM vouchers WHERE voucher_id = ?", voucher_id)
