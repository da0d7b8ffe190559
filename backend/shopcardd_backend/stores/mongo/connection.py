"""The MongoDB store's connection: the client, its collections and their indexes, and the
mapping of pymongo's errors to ours, which every part of the store shares."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
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

from ...storage import Closing
from ..base import (
    DuplicateError,
    Record,
    StoreError,
    StoreUnavailable,
    record_fields,
    record_from_fields,
)

DUPLICATE_KEY = 11000
TRANSIENT = (ConnectionFailure, ExecutionTimeout, WTimeoutError, InvalidOperation)
"""Server unreachable, timed out, or this store closed: worth a retry later (503)."""


def as_document(id_field: str, record: Any) -> dict[str, Any]:
    """A record as a document: its id field is stored as ``_id``."""
    values = record_fields(record)
    return {"_id": values.pop(id_field), **values}


def as_record(kind: type[Record], id_field: str, document: Mapping[str, Any]) -> Record:
    """The record a document holds, its ``_id`` back under the id field."""
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


class MongoConnection(Closing):
    """The client and the collections on the MongoDB database ``database`` at ``uri``."""

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
        self._stale_vouchers = self._vouchers.with_options(read_preference=self.stale_reads)
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

    def _insert(self, collection: Collection[dict[str, Any]], document: dict[str, Any]) -> None:
        with self._mapped_errors():
            try:
                collection.insert_one(document)
            except DuplicateKeyError as exc:
                raise DuplicateError(f"{collection.name}: {exc.details or exc}") from exc

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

    def check(self) -> None:
        with self._mapped_errors():
            self._client.admin.command("ping")

    def close(self) -> None:
        self._client.close()
