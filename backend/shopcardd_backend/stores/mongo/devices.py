"""Devices, redemptions, revocations and used device-token ids in MongoDB: the ``DeviceRecords``
port (device enrolment and sync)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
)

from ..base import (
    DeviceRecord,
    DeviceStatus,
    RedemptionRecord,
    RevocationKind,
    RevocationRecord,
    VoucherRecord,
    first_redemption,
    record_fields,
    record_from_fields,
    utc_ms,
)
from .connection import DUPLICATE_KEY, MongoConnection, as_document, as_record


class DeviceCollections(MongoConnection):
    """``DeviceRecords`` on the ``devices``, ``redemptions``, ``revocations`` and
    ``device_token_ids`` collections."""

    def add_device(self, device: DeviceRecord) -> None:
        self._insert(self._devices, as_document("device_id", device))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._mapped_errors():
            found = self._devices.find_one({"_id": device_id})
        return None if found is None else as_record(DeviceRecord, "device_id", found)

    def set_device_status(self, device_id: str, status: DeviceStatus, at: datetime) -> DeviceRecord | None:
        with self._mapped_errors():
            if status is DeviceStatus.REVOKED:
                self._devices.update_one(
                    {"_id": device_id, "revoked_at": None}, {"$set": {"revoked_at": utc_ms(at)}}
                )
                change: dict[str, Any] = {"$set": {"status": str(status)}}
            else:
                change = {"$set": {"status": str(status), "revoked_at": None}}
            found = self._devices.find_one_and_update(
                {"_id": device_id}, change, return_document=ReturnDocument.AFTER
            )
        return None if found is None else as_record(DeviceRecord, "device_id", found)

    def devices_of_merchant(self, merchant_id: str) -> Sequence[DeviceRecord]:
        with self._mapped_errors():
            found = list(self._devices.find({"merchant_id": merchant_id}).sort("_id", 1))
        return [as_record(DeviceRecord, "device_id", document) for document in found]

    def use_token_id(self, device_id: str, token_id: str, keep_until: datetime, now: datetime) -> bool:
        with self._mapped_errors():
            try:
                self._used_tokens.insert_one(
                    {"_id": f"{device_id} {token_id}", "keep_until": utc_ms(keep_until)}
                )
            except DuplicateKeyError:
                # A leftover the TTL monitor (once a minute) has not removed yet is no replay.
                stale = self._used_tokens.delete_one(
                    {"_id": f"{device_id} {token_id}", "keep_until": {"$lt": utc_ms(now)}}
                )
                return bool(stale.deleted_count) and self.use_token_id(device_id, token_id, keep_until, now)
        return True

    def save_redemptions(self, redemptions: Sequence[RedemptionRecord]) -> dict[str, RedemptionRecord]:
        if not redemptions:
            return {}
        merchant_id = redemptions[0].merchant_id
        with self._mapped_errors():
            try:
                self._redemptions.insert_many([record_fields(r) for r in redemptions], ordered=False)
            except BulkWriteError as exc:
                if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                    raise
            ids = list({redemption.voucher_id for redemption in redemptions})
            found: dict[str, list[RedemptionRecord]] = {}
            query = {"merchant_id": merchant_id, "voucher_id": {"$in": ids}}
            for document in self._redemptions.find(query, {"_id": 0}):
                found.setdefault(document["voucher_id"], []).append(
                    record_from_fields(RedemptionRecord, document)
                )
        return {voucher_id: first_redemption(records) for voucher_id, records in found.items()}

    def count_redemptions(self, merchant_id: str) -> int:
        with self._mapped_errors():
            return self._redemptions.count_documents({"merchant_id": merchant_id})

    def conflicts_of_merchant(
        self, merchant_id: str, limit: int, after: str | None = None
    ) -> list[list[RedemptionRecord]]:
        match: dict[str, Any] = {"merchant_id": merchant_id}
        if after is not None:
            match["voucher_id"] = {"$gt": after}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": "$voucher_id", "devices": {"$sum": 1}}},
            {"$match": {"devices": {"$gt": 1}}},
            {"$sort": {"_id": 1}},
            {"$limit": limit},
        ]
        with self._mapped_errors():
            ids = [group["_id"] for group in self._stale_redemptions.aggregate(pipeline)]
            found = self._stale_redemptions.find(
                {"merchant_id": merchant_id, "voucher_id": {"$in": ids}}, {"_id": 0}
            )
            records = [record_from_fields(RedemptionRecord, document) for document in found]
        grouped: dict[str, list[RedemptionRecord]] = {voucher_id: [] for voucher_id in ids}
        for record in sorted(records, key=lambda r: (r.voucher_id, r.received_at, r.device_id)):
            grouped[record.voucher_id].append(record)
        return list(grouped.values())

    def add_revocation(
        self, merchant_id: str, kind: RevocationKind, target_id: str, at: datetime
    ) -> RevocationRecord:
        """The next ``seq`` is the merchant's highest plus one, claimed by the unique index: a
        revocation is written only after the one before it was visible, so a reader never sees
        ``seq`` 5 without 4 (a counter document would hand out 4 and 5 whose writes land in
        either order, and a device's watermark would skip the late one)."""
        target = {"merchant_id": merchant_id, "kind": str(kind), "target_id": target_id}
        with self._mapped_errors():
            while True:
                found = self._revocations.find_one(target, {"_id": 0})
                if found is not None:
                    return record_from_fields(RevocationRecord, found)
                last = self._revocations.find_one({"merchant_id": merchant_id}, sort=[("seq", -1)])
                record = RevocationRecord(merchant_id, kind, target_id, at, (last or {}).get("seq", 0) + 1)
                try:
                    self._revocations.insert_one(record_fields(record))
                    return record_from_fields(RevocationRecord, record_fields(record))
                except DuplicateKeyError:
                    continue  # another revocation took that seq, or this target: look again

    def revocations_after(self, merchant_id: str, after: int, limit: int) -> list[RevocationRecord]:
        with self._mapped_errors():
            found = list(
                self._revocations.find({"merchant_id": merchant_id, "seq": {"$gt": after}}, {"_id": 0})
                .sort("seq", 1)
                .limit(limit)
            )
        return [record_from_fields(RevocationRecord, document) for document in found]

    def get_voucher(self, voucher_id: str) -> VoucherRecord | None:
        with self._mapped_errors():
            found = self._vouchers.find_one({"_id": voucher_id})
        return None if found is None else as_record(VoucherRecord, "voucher_id", found)
