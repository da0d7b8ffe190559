"""The scaled document store: MongoDB through pymongo.

Collections (each record's id is its ``_id``, the other fields keep their names):

- ``merchants``: ``_id`` merchant id; unique index ``api_key_hash``.
- ``deals``: ``_id`` deal id; index ``(merchant_id, created_at, _id)`` for a merchant's list.
- ``vouchers``: ``_id`` the voucher id, i.e. the token's ``jti``; index ``(deal_id, issued_at)``
  for rebuilding the gate, unique index ``(deal_id, user_id, idempotency_key)``: one voucher
  per claim, whatever the relay redelivers.
- ``claim_tallies``: ``_id`` the event's id (one record per event: a redelivery inserts
  nothing); index ``(deal_id, minute)``: a deal's statistics are one aggregation over it.
- ``notices``: ``_id`` ``"<voucher id>/<channel>"``: a notice taken for sending.

``ensure_indexes()`` creates them; call it at start-up (the app's lifespan), never at import.
The client is made in the constructor, so each worker process makes its own after the fork;
pymongo connects lazily, and a short server selection timeout turns an outage into a prompt
``StoreUnavailable``. The write concern comes from the URI (``w=majority&journal=true`` on a
replica set).

Sharded layout (documented, not testable on SecantusDB): ``vouchers`` and ``redemptions`` are
sharded on ``{merchant_id: "hashed"}``: a merchant's counters read their vouchers from one shard,
and hashing spreads a big merchant's flash sale over all shards. ``_id`` stays globally
unique because it is 128 random bits, but a unique index must contain the shard key, so on a
sharded cluster the ``(deal_id, user_id, idempotency_key)`` index becomes
``(merchant_id, deal_id, user_id, idempotency_key)`` (a deal belongs to one merchant, so the
guarantee is the same). ``merchants`` and ``deals`` are small and stay unsharded on the primary
shard. ``claim_tallies`` is sharded on ``{deal_id: "hashed"}``: a deal's statistics read one
shard, and a redelivered event (same deal, same shard) still meets its ``_id`` there.
``notices`` is sharded on ``{_id: "hashed"}``. Lookups by ``_id`` alone (a voucher by its ``jti``)
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

from ..storage import Closing
from .base import (
    CLAIM_COUNTS,
    ClaimTally,
    DealPage,
    DealRecord,
    DealStatus,
    DuplicateError,
    MerchantRecord,
    MinuteCounts,
    Record,
    Stored,
    StoreError,
    StoreUnavailable,
    VoucherRecord,
    deal_page,
    parse_deal_cursor,
    record_fields,
    record_from_fields,
    utc_ms,
)

DUPLICATE_KEY = 11000
TRANSIENT = (ConnectionFailure, ExecutionTimeout, WTimeoutError, InvalidOperation)
"""Server unreachable, timed out, or this store closed: worth a retry later (503)."""


def _document(id_field: str, record: Stored) -> dict[str, Any]:
    values = record_fields(record)
    return {"_id": values.pop(id_field), **values}


def _record(kind: type[Record], id_field: str, document: Mapping[str, Any]) -> Record:
    return record_from_fields(kind, {**document, id_field: document["_id"]})


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

    def _insert(self, collection: Collection[dict[str, Any]], document: dict[str, Any]) -> None:
        with self._mapped_errors():
            try:
                collection.insert_one(document)
            except DuplicateKeyError as exc:
                raise DuplicateError(f"{collection.name}: {exc.details or exc}") from exc

    def add_merchant(self, merchant: MerchantRecord) -> None:
        self._insert(self._merchants, _document("merchant_id", merchant))

    def merchant_for_key_hash(self, api_key_hash: str) -> str | None:
        with self._mapped_errors():
            found = self._merchants.find_one({"api_key_hash": api_key_hash}, {"_id": 1})
        return None if found is None else found["_id"]

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
            found = list(self._deals.find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit + 1))
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
            found = list(self._tallies.aggregate(pipeline))
        return [MinuteCounts(utc_ms(g["_id"]), *(int(g[name]) for name in CLAIM_COUNTS)) for g in found]

    def claim_notice(self, voucher_id: str, channel: str) -> bool:
        notice = {"_id": f"{voucher_id}/{channel}", "taken_at": datetime.now(UTC)}
        with self._mapped_errors():
            try:
                self._notices.insert_one(notice)
            except DuplicateKeyError:
                return False
        return True

    def release_notice(self, voucher_id: str, channel: str) -> None:
        with self._mapped_errors():
            self._notices.delete_one({"_id": f"{voucher_id}/{channel}"})

    def check(self) -> None:
        with self._mapped_errors():
            self._client.admin.command("ping")

    def close(self) -> None:
        self._client.close()
