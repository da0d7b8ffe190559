"""Merchants, deals and vouchers in SQLite: what the API and the persist worker write."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..base import (
    DealPage,
    DealRecord,
    DealStatus,
    DuplicateError,
    MerchantRecord,
    VoucherRecord,
    deal_page,
    parse_deal_cursor,
    record_fields,
)
from .connection import SqliteConnection, as_record, as_stamp


class DealTables(SqliteConnection):
    """The ``merchants``, ``deals`` and ``vouchers`` tables."""

    def add_merchant(self, merchant: MerchantRecord) -> None:
        self._add("merchants", merchant)

    def merchant_for_key_hash(self, api_key_hash: str, now: datetime | None = None) -> str | None:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT merchant_id FROM merchants WHERE api_key_hash = ? UNION ALL "
                "SELECT merchant_id FROM retired_api_keys WHERE api_key_hash = ? AND valid_until > ?",
                (api_key_hash, api_key_hash, as_stamp(now or datetime.now(UTC))),
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
        return deal_page([as_record(DealRecord, row) for row in rows], limit)

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE deals SET status = ? WHERE deal_id = ?", (str(status), deal_id))
            row = tx.execute("SELECT * FROM deals WHERE deal_id = ?", (deal_id,)).fetchone()
        return None if row is None else as_record(DealRecord, row)

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
                    found[row["voucher_id"]] = record_fields(as_record(VoucherRecord, row))
        return [voucher_id for voucher_id, fields in wanted.items() if found.get(voucher_id) != fields]

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM vouchers WHERE deal_id = ? ORDER BY issued_at, voucher_id", (deal_id,)
            ).fetchall()
        return [as_record(VoucherRecord, row) for row in rows]
