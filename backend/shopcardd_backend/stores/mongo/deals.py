"""Merchants, deals and vouchers in MongoDB: what the API and the persist worker write."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument

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
    utc_ms,
)
from .connection import MongoConnection, as_document, as_record


class DealCollections(MongoConnection):
    """The ``merchants``, ``deals`` and ``vouchers`` collections."""

    def add_merchant(self, merchant: MerchantRecord) -> None:
        self._insert(self._merchants, as_document("merchant_id", merchant))

    def merchant_for_key_hash(self, api_key_hash: str, now: datetime | None = None) -> str | None:
        with self._mapped_errors():
            found = self._merchants.find_one({"api_key_hash": api_key_hash}, {"_id": 1})
            if found is not None:
                return str(found["_id"])
            retired = self._retired_keys.find_one(
                {"_id": api_key_hash, "valid_until": {"$gt": utc_ms(now or datetime.now(UTC))}}
            )
        return None if retired is None else str(retired["merchant_id"])

    def add_deal(self, deal: DealRecord) -> None:
        self._insert(self._deals, as_document("deal_id", deal))

    def get_deal(self, deal_id: str) -> DealRecord | None:
        with self._mapped_errors():
            found = self._deals.find_one({"_id": deal_id})
        return None if found is None else as_record(DealRecord, "deal_id", found)

    def deals_of_merchant(self, merchant_id: str, limit: int, after: str | None = None) -> DealPage:
        query: dict[str, Any] = {"merchant_id": merchant_id}
        if after is not None:
            created_at, deal_id = parse_deal_cursor(after)
            query["$or"] = [
                {"created_at": {"$lt": created_at}},
                {"created_at": created_at, "_id": {"$lt": deal_id}},
            ]
        with self._mapped_errors():
            found = list(
                self._stale_deals.find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit + 1)
            )
        return deal_page([as_record(DealRecord, "deal_id", document) for document in found], limit)

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        with self._mapped_errors():
            found = self._deals.find_one_and_update(
                {"_id": deal_id}, {"$set": {"status": str(status)}}, return_document=ReturnDocument.AFTER
            )
        return None if found is None else as_record(DealRecord, "deal_id", found)

    def save_voucher(self, voucher: VoucherRecord) -> bool:
        try:
            self._insert(self._vouchers, as_document("voucher_id", voucher))
            return True
        except DuplicateError:
            with self._mapped_errors():
                found = self._vouchers.find_one({"_id": voucher.voucher_id})
            if found is not None and record_fields(
                as_record(VoucherRecord, "voucher_id", found)
            ) == record_fields(voucher):
                return False
            raise

    def save_vouchers(self, vouchers: Sequence[VoucherRecord]) -> list[str]:
        if not vouchers:
            return []
        documents = [as_document("voucher_id", voucher) for voucher in vouchers]
        with self._mapped_errors():
            duplicates = self._insert_new(self._vouchers, documents)
            if not duplicates:
                return []
            stored = {
                document["_id"]: record_fields(as_record(VoucherRecord, "voucher_id", document))
                for document in self._vouchers.find({"_id": {"$in": duplicates}})
            }
        wanted = {v.voucher_id: record_fields(v) for v in vouchers}
        return [voucher_id for voucher_id in duplicates if stored.get(voucher_id) != wanted[voucher_id]]

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        with self._mapped_errors():
            found = list(self._vouchers.find({"deal_id": deal_id}).sort([("issued_at", 1), ("_id", 1)]))
        return [as_record(VoucherRecord, "voucher_id", document) for document in found]
