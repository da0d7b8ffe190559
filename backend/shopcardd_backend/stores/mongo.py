"""The scaled document store: MongoDB through pymongo.

Collections (each record's id is its ``_id``, the other fields keep their names):

- ``merchants``: ``_id`` merchant id; unique index ``api_key_hash``.
- ``deals``: ``_id`` deal id; index ``(merchant_id, created_at, _id)`` for a merchant's list.
- ``vouchers``: ``_id`` the voucher id, i.e. the token's ``jti``; index ``(deal_id, issued_at)``
  for rebuilding the gate, unique index ``(deal_id, user_id, idempotency_key)``: one voucher
  per claim, whatever the relay redelivers.
- ``claim_tallies``: ``_id`` the event's id (one record per event: a redelivery inserts
  nothing); index ``(deal_id, minute)``: a deal's statistics are one aggregation over it.
- ``notices``: ``_id`` ``"<voucher id>/<channel>"``: a notice taken for sending, with its
  ``deal_id``, ``channel`` and ``outcome`` (``sent``, ``refused``; none while being sent);
  index ``(deal_id, channel, outcome)``: a deal's notice counts are one aggregation over it.
- ``devices``: ``_id`` device id; index ``(merchant_id, _id)`` for a merchant's peers; unique
  index ``public_key.x``: one key, one device.
- ``redemptions``: unique index ``(merchant_id, voucher_id, device_id)``: one per voucher and
  device, so a re-uploaded batch changes nothing.
- ``revocations``: unique indexes ``(merchant_id, seq)`` (the sync watermark, without gaps) and
  ``(merchant_id, kind, target_id)`` (revoking twice is harmless).
- ``device_token_ids``: ``_id`` ``"DEVICE JTI"``; a TTL index on ``keep_until`` forgets used ids.

``ensure_indexes()`` creates them; call it at start-up (the app's lifespan), never at import.
The client is made in the constructor, so each worker process makes its own after the fork;
pymongo connects lazily, and a short server selection timeout turns an outage into a prompt
``StoreUnavailable``. The write concern comes from the URI (``w=majority&journal=true`` on a
replica set). The reads that may lag a little (a deal's stats, a merchant's deals and conflicts)
go where ``stale_reads`` says (``SHOPCARDD_MONGODB_READ_PREFERENCE``); every other read goes to
the primary, since it reads what was just written.

Sharded layout (documented, not testable on SecantusDB): ``vouchers`` and ``redemptions`` are
sharded on ``{merchant_id: "hashed"}``: a merchant's counters read their vouchers from one shard,
and hashing spreads a big merchant's flash sale over all shards. ``_id`` stays globally
unique because it is 128 random bits, but a unique index must contain the shard key, so on a
sharded cluster the ``(deal_id, user_id, idempotency_key)`` index becomes
``(merchant_id, deal_id, user_id, idempotency_key)`` (a deal belongs to one merchant, so the
guarantee is the same). ``merchants`` and ``deals`` are small and stay unsharded on the primary
shard. ``claim_tallies`` is sharded on ``{deal_id: "hashed"}``: a deal's statistics read one
shard, and a redelivered event (same deal, same shard) still meets its ``_id`` there.
``notices`` is sharded on ``{_id: "hashed"}`` (a deal's notice counts then ask every shard,
each on its own index). Lookups by ``_id`` alone (a voucher by its ``jti``)
are scatter-gather there; the device sync path always knows the merchant and includes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidOperation,
    PyMongoError,
    WTimeoutError,
)
from pymongo.read_preferences import (
    Nearest,
    Primary,
    PrimaryPreferred,
    Secondary,
    SecondaryPreferred,
)

from ..storage import Closing
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
    StoreError,
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

DUPLICATE_KEY = 11000
TRANSIENT = (ConnectionFailure, ExecutionTimeout, WTimeoutError, InvalidOperation)
"""Server unreachable, timed out, or this store closed: worth a retry later (503)."""


def _document(id_field: str, record: Any) -> dict[str, Any]:
    values = record_fields(record)
    return {"_id": values.pop(id_field), **values}


def _record(kind: type[Record], id_field: str, document: Mapping[str, Any]) -> Record:
    return record_from_fields(kind, {**document, id_field: document["_id"]})


ReadPreference = Primary | PrimaryPreferred | Secondary | SecondaryPreferred | Nearest
READ_PREFERENCES: dict[str, type[ReadPreference]] = {
    "primary": Primary,
    "primaryPreferred": PrimaryPreferred,
    "secondary": Secondary,
    "secondaryPreferred": SecondaryPreferred,
    "nearest": Nearest,
}
"""The read preference modes by their name in a MongoDB URI (``readPreference=...``)."""


class MongoDocumentStore(Closing):
    """``DocumentStore`` on the MongoDB database ``database`` at ``uri``."""

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        server_selection_timeout_ms: int = 2000,
        timeout_ms: int = 5000,
        retry_after: int = 1,
        stale_reads: str = "primary",
    ) -> None:
        self.database_name = database
        self.retry_after = retry_after
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            uri,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
            tz_aware=True,
            appname="shopcardd-backend",
        )
        db = self._client[database]
        self._merchants: Collection[dict[str, Any]] = db["merchants"]
        self._deals: Collection[dict[str, Any]] = db["deals"]
        self._vouchers: Collection[dict[str, Any]] = db["vouchers"]
        self._tallies: Collection[dict[str, Any]] = db["claim_tallies"]
        self._notices: Collection[dict[str, Any]] = db["notices"]
        self._devices: Collection[dict[str, Any]] = db["devices"]
        self._redemptions: Collection[dict[str, Any]] = db["redemptions"]
        self._revocations: Collection[dict[str, Any]] = db["revocations"]
        self._used_tokens: Collection[dict[str, Any]] = db["device_token_ids"]
        self._device_syncs: Collection[dict[str, Any]] = db["device_syncs"]
        self._retired_keys: Collection[dict[str, Any]] = db["retired_api_keys"]
        self._sessions: Collection[dict[str, Any]] = db["console_sessions"]
        self.stale_reads: ReadPreference = READ_PREFERENCES[stale_reads]()
        """Where a deal's stats and a merchant's lists of deals and conflicts are read."""
        self._stale_deals = self._deals.with_options(read_preference=self.stale_reads)
        self._stale_tallies = self._tallies.with_options(read_preference=self.stale_reads)
        self._stale_redemptions = self._redemptions.with_options(read_preference=self.stale_reads)

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except TRANSIENT as exc:
            raise StoreUnavailable(f"MongoDB: {exc}", self.retry_after) from exc
        except PyMongoError as exc:
            raise StoreError(f"MongoDB: {exc}") from exc

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent); at start-up, before the first request."""
        with self._mapped_errors():
            self._merchants.create_index("api_key_hash", unique=True, name="api_key_hash_unique")
            self._deals.create_index(
                [("merchant_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                name="by_merchant_newest",
            )
            self._vouchers.create_index([("deal_id", ASCENDING), ("issued_at", ASCENDING)], name="by_deal")
            self._vouchers.create_index(
                [("deal_id", ASCENDING), ("user_id", ASCENDING), ("idempotency_key", ASCENDING)],
                unique=True,
                name="one_voucher_per_claim",
            )
            self._tallies.create_index([("deal_id", ASCENDING), ("minute", ASCENDING)], name="by_deal_minute")
            self._notices.create_index(
                [("deal_id", ASCENDING), ("channel", ASCENDING), ("outcome", ASCENDING)], name="by_deal"
            )
        self._ensure_device_indexes()
        with self._mapped_errors():
            self._redemptions.create_index(
                [("deal_id", ASCENDING), ("voucher_id", ASCENDING)], name="by_deal"
            )
            self._redemptions.create_index([("voucher_id", ASCENDING)], name="by_voucher")
            self._sessions.create_index("expires_at", expireAfterSeconds=0, name="forget_expired")
            self._retired_keys.create_index("valid_until", expireAfterSeconds=0, name="forget_retired")

    def _insert(self, collection: Collection[dict[str, Any]], document: dict[str, Any]) -> None:
        with self._mapped_errors():
            try:
                collection.insert_one(document)
            except DuplicateKeyError as exc:
                raise DuplicateError(f"{collection.name}: {exc.details or exc}") from exc

    def add_merchant(self, merchant: MerchantRecord) -> None:
        self._insert(self._merchants, _document("merchant_id", merchant))

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
        self._insert(self._deals, _document("deal_id", deal))

    def get_deal(self, deal_id: str) -> DealRecord | None:
        with self._mapped_errors():
            found = self._deals.find_one({"_id": deal_id})
        return None if found is None else _record(DealRecord, "deal_id", found)

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
        return deal_page([_record(DealRecord, "deal_id", document) for document in found], limit)

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        with self._mapped_errors():
            found = self._deals.find_one_and_update(
                {"_id": deal_id}, {"$set": {"status": str(status)}}, return_document=ReturnDocument.AFTER
            )
        return None if found is None else _record(DealRecord, "deal_id", found)

    def save_voucher(self, voucher: VoucherRecord) -> bool:
        try:
            self._insert(self._vouchers, _document("voucher_id", voucher))
            return True
        except DuplicateError:
            with self._mapped_errors():
                found = self._vouchers.find_one({"_id": voucher.voucher_id})
            if found is not None and record_fields(
                _record(VoucherRecord, "voucher_id", found)
            ) == record_fields(voucher):
                return False
            raise

    def save_vouchers(self, vouchers: Sequence[VoucherRecord]) -> list[str]:
        if not vouchers:
            return []
        documents = [_document("voucher_id", voucher) for voucher in vouchers]
        with self._mapped_errors():
            duplicates = self._insert_new(self._vouchers, documents)
            if not duplicates:
                return []
            stored = {
                document["_id"]: record_fields(_record(VoucherRecord, "voucher_id", document))
                for document in self._vouchers.find({"_id": {"$in": duplicates}})
            }
        wanted = {v.voucher_id: record_fields(v) for v in vouchers}
        return [voucher_id for voucher_id in duplicates if stored.get(voucher_id) != wanted[voucher_id]]

    def _insert_new(
        self, collection: Collection[dict[str, Any]], documents: list[dict[str, Any]]
    ) -> list[Any]:
        """Insert the documents (unordered, one round trip); the ``_id`` of those already there."""
        try:
            collection.insert_many(documents, ordered=False)
            return []
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            return [documents[error["index"]]["_id"] for error in errors]

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        with self._mapped_errors():
            found = list(self._vouchers.find({"deal_id": deal_id}).sort([("issued_at", 1), ("_id", 1)]))
        return [_record(VoucherRecord, "voucher_id", document) for document in found]

    def add_claim_tallies(self, tallies: Sequence[ClaimTally]) -> None:
        if tallies:
            with self._mapped_errors():
                self._insert_new(self._tallies, [_document("event_id", tally) for tally in tallies])

    def claims_by_minute(self, deal_id: str) -> list[MinuteCounts]:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id}},
            {"$group": {"_id": "$minute", **{name: {"$sum": f"${name}"} for name in CLAIM_COUNTS}}},
            {"$sort": {"_id": 1}},
        ]
        with self._mapped_errors():
            found = list(self._stale_tallies.aggregate(pipeline))
        return [MinuteCounts(utc_ms(g["_id"]), *(int(g[name]) for name in CLAIM_COUNTS)) for g in found]

    def claim_notice(self, voucher_id: str, channel: str, deal_id: str) -> bool:
        notice = {
            "_id": f"{voucher_id}/{channel}",
            "taken_at": datetime.now(UTC),
            "deal_id": deal_id,
            "channel": channel,
            "outcome": None,
        }
        with self._mapped_errors():
            try:
                self._notices.insert_one(notice)
            except DuplicateKeyError:
                return False
        return True

    def release_notice(self, voucher_id: str, channel: str) -> None:
        with self._mapped_errors():
            self._notices.delete_one({"_id": f"{voucher_id}/{channel}"})

    def record_notice(self, voucher_id: str, channel: str, outcome: NoticeOutcome) -> None:
        with self._mapped_errors():
            self._notices.update_one({"_id": f"{voucher_id}/{channel}"}, {"$set": {"outcome": str(outcome)}})

    def notices_of(self, deal_id: str) -> dict[str, NoticeCounts]:
        outcomes = [str(outcome) for outcome in NoticeOutcome]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id, "outcome": {"$in": outcomes}}},
            {"$group": {"_id": {"channel": "$channel", "outcome": "$outcome"}, "count": {"$sum": 1}}},
        ]
        with self._mapped_errors():
            found = list(self._notices.aggregate(pipeline))
        return notice_counts((g["_id"]["channel"], g["_id"]["outcome"], g["count"]) for g in found)

    # --- Devices, redemptions, revocations and used device-token ids (device enrolment and sync) ---

    def _ensure_device_indexes(self) -> None:
        with self._mapped_errors():
            self._devices.create_index([("merchant_id", ASCENDING), ("_id", ASCENDING)], name="by_merchant")
            self._devices.create_index("public_key.x", unique=True, name="one_device_per_key")
            self._redemptions.create_index(
                [("merchant_id", ASCENDING), ("voucher_id", ASCENDING), ("device_id", ASCENDING)],
                unique=True,
                name="one_per_voucher_and_device",
            )
            self._revocations.create_index(
                [("merchant_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="merchant_seq"
            )
            self._revocations.create_index(
                [("merchant_id", ASCENDING), ("kind", ASCENDING), ("target_id", ASCENDING)],
                unique=True,
                name="one_per_target",
            )
            # MongoDB deletes the used token ids itself once their time has passed.
            self._used_tokens.create_index("keep_until", expireAfterSeconds=0, name="forget_after_use")

    def add_device(self, device: DeviceRecord) -> None:
        self._insert(self._devices, _document("device_id", device))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._mapped_errors():
            found = self._devices.find_one({"_id": device_id})
        return None if found is None else _record(DeviceRecord, "device_id", found)

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
        return None if found is None else _record(DeviceRecord, "device_id", found)

    def devices_of_merchant(self, merchant_id: str) -> Sequence[DeviceRecord]:
        with self._mapped_errors():
            found = list(self._devices.find({"merchant_id": merchant_id}).sort("_id", 1))
        return [_record(DeviceRecord, "device_id", document) for document in found]

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
        return None if found is None else _record(VoucherRecord, "voucher_id", found)

    # --- end of the device sync block ---

    # --- What the merchant reads, API key rotation, console sessions ---

    def vouchers_page(self, deal_id: str, limit: int, after: str | None = None) -> list[VoucherRecord]:
        with self._mapped_errors():
            found = list(
                self._vouchers.find({"deal_id": deal_id, "_id": {"$gt": after or ""}})
                .sort("_id", 1)
                .limit(limit)
            )
        return [_record(VoucherRecord, "voucher_id", document) for document in found]

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
        self._insert(self._sessions, _document("session_hash", session))

    def console_session(self, session_hash: str, now: datetime) -> ConsoleSession | None:
        with self._mapped_errors():
            found = self._sessions.find_one({"_id": session_hash, "expires_at": {"$gt": utc_ms(now)}})
        return None if found is None else _record(ConsoleSession, "session_hash", found)

    def end_console_session(self, session_hash: str) -> None:
        with self._mapped_errors():
            self._sessions.delete_one({"_id": session_hash})

    def check(self) -> None:
        with self._mapped_errors():
            self._client.admin.command("ping")

    def close(self) -> None:
        self._client.close()
