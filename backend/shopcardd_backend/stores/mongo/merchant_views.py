"""What the merchant reads, API key rotation and console sessions in MongoDB: the
``MerchantViews`` port."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from ..base import (
    ConsoleSession,
    DeviceActivity,
    DuplicateError,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    VoucherCounts,
    VoucherRecord,
    record_from_fields,
    utc_ms,
)
from .connection import MongoConnection, as_document, as_record


class MerchantViewCollections(MongoConnection):
    """``MerchantViews`` on the store's collections, ``device_syncs``, ``retired_api_keys`` and
    ``console_sessions`` among them."""

    def vouchers_page(self, deal_id: str, limit: int, after: str | None = None) -> list[VoucherRecord]:
        with self._mapped_errors():
            found = list(
                self._vouchers.find({"deal_id": deal_id, "_id": {"$gt": after or ""}})
                .sort("_id", 1)
                .limit(limit)
            )
        return [as_record(VoucherRecord, "voucher_id", document) for document in found]

    def voucher_counts(self, deal_id: str) -> VoucherCounts:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id}},
            {"$group": {"_id": "$voucher_id"}},
            {"$count": "redeemed"},
        ]
        with self._mapped_errors():
            issued = self._vouchers.count_documents({"deal_id": deal_id})
            redeemed = next(iter(self._redemptions.aggregate(pipeline)), {"redeemed": 0})["redeemed"]
        return VoucherCounts(issued, int(redeemed))

    def redemptions_of_voucher(self, voucher_id: str) -> list[RedemptionRecord]:
        with self._mapped_errors():
            found = [
                record_from_fields(RedemptionRecord, document)
                for document in self._redemptions.find({"voucher_id": voucher_id}, {"_id": 0})
            ]
        return sorted(found, key=lambda r: (r.received_at, r.device_id))

    def revocation_of(
        self, merchant_id: str, kind: RevocationKind, target_id: str
    ) -> RevocationRecord | None:
        target = {"merchant_id": merchant_id, "kind": str(kind), "target_id": target_id}
        with self._mapped_errors():
            found = self._revocations.find_one(target, {"_id": 0})
        return None if found is None else record_from_fields(RevocationRecord, found)

    def record_sync(self, device_id: str, at: datetime) -> None:
        with self._mapped_errors():
            self._device_syncs.update_one(
                {"_id": device_id}, {"$max": {"last_sync_at": utc_ms(at)}}, upsert=True
            )

    def device_activity(self, merchant_id: str) -> dict[str, DeviceActivity]:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"merchant_id": merchant_id}},
            {"$group": {"_id": "$device_id", "redemptions": {"$sum": 1}}},
        ]
        with self._mapped_errors():
            ids = [
                document["_id"] for document in self._devices.find({"merchant_id": merchant_id}, {"_id": 1})
            ]
            counts = {
                group["_id"]: int(group["redemptions"]) for group in self._redemptions.aggregate(pipeline)
            }
            synced = {
                document["_id"]: utc_ms(document["last_sync_at"])
                for document in self._device_syncs.find({"_id": {"$in": ids}})
            }
        return {
            device_id: DeviceActivity(device_id, synced.get(device_id), counts.get(device_id, 0))
            for device_id in ids
            if device_id in synced or counts.get(device_id)
        }

    def rotate_api_key(self, merchant_id: str, new_key_hash: str, old_valid_until: datetime) -> bool:
        with self._mapped_errors():
            found = self._merchants.find_one({"_id": merchant_id})
            if found is None:
                return False
            self._retired_keys.replace_one(
                {"_id": found["api_key_hash"]},
                {"merchant_id": merchant_id, "valid_until": utc_ms(old_valid_until)},
                upsert=True,
            )
            try:
                self._merchants.update_one({"_id": merchant_id}, {"$set": {"api_key_hash": new_key_hash}})
            except DuplicateKeyError as exc:
                raise DuplicateError(f"merchants: {exc.details or exc}") from exc
        return True

    def add_console_session(self, session: ConsoleSession) -> None:
        self._insert(self._sessions, as_document("session_hash", session))

    def console_session(self, session_hash: str, now: datetime) -> ConsoleSession | None:
        with self._mapped_errors():
            found = self._sessions.find_one({"_id": session_hash, "expires_at": {"$gt": utc_ms(now)}})
        return None if found is None else as_record(ConsoleSession, "session_hash", found)

    def end_console_session(self, session_hash: str) -> None:
        with self._mapped_errors():
            self._sessions.delete_one({"_id": session_hash})
