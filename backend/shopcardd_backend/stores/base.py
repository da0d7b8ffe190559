"""The document store port: the durable record of merchants, deals and vouchers.

The claim gate decides claims; this store remembers what was decided, for reads, audits
and for rebuilding the gate's counters. Adapters: ``mongo.py`` (pymongo; indexes created
at start-up; a voucher's ``_id`` is its ``jti``) and ``sqlite.py`` (the embedded profile).
Both pass ``tests/backend/test_store_contract.py``. Writes are idempotent: saving the same
voucher twice (a redelivered message) changes nothing the second time.

Times go in as aware datetimes (naive ones are taken as UTC) and come back in UTC with
millisecond precision, the precision of a BSON date: every adapter answers alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from ..storage import TransientError


class StoreError(Exception):
    """Root of the store's errors."""


class StoreUnavailable(StoreError, TransientError):
    """The store cannot be reached now; transient, the caller answers 503 + Retry-After."""


class DuplicateError(StoreError, ValueError):
    """A record with that id already exists with other contents."""


class DealStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class MerchantRecord:
    merchant_id: str
    api_key_hash: str
    """A hash of the merchant's API key; the key itself is shown once and never stored."""
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DealRecord:
    deal_id: str
    merchant_id: str
    title: str
    stock: int
    per_user_limit: int
    voucher_ttl_seconds: int
    starts_at: datetime | None
    ends_at: datetime | None
    status: DealStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VoucherRecord:
    """One issued voucher (one successful claim). ``voucher_id`` is the token's ``jti``."""

    voucher_id: str
    deal_id: str
    merchant_id: str
    user_id: str
    idempotency_key: str
    issued_at: datetime
    expires_at: datetime


class DocumentStore(Protocol):
    def add_merchant(self, merchant: MerchantRecord) -> None:
        """Register a merchant; DuplicateError when the id is taken."""

    def merchant_for_key_hash(self, api_key_hash: str) -> str | None:
        """The merchant id whose API key has this hash, or None."""

    def add_deal(self, deal: DealRecord) -> None:
        """Store a new deal; DuplicateError when the id is taken."""

    def get_deal(self, deal_id: str) -> DealRecord | None: ...

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        """Change a deal's status; the updated deal, or None when there is no such deal."""

    def save_voucher(self, voucher: VoucherRecord) -> bool:
        """Record an issued voucher idempotently; True when it was new."""

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        """Every voucher of a deal, for rebuilding the gate's counters."""

    def check(self) -> None:
        """Prove the store answers (for ``/readyz``); StoreUnavailable when it does not."""

    def close(self) -> None: ...


Record = TypeVar("Record", MerchantRecord, DealRecord, VoucherRecord)


def utc_ms(value: datetime) -> datetime:
    """A time as every store gives it back: UTC, whole milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def record_fields(record: MerchantRecord | DealRecord | VoucherRecord) -> dict[str, Any]:
    """A record as plain values (times normalised with ``utc_ms``, enums as strings)."""
    values: dict[str, Any] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        if isinstance(value, datetime):
            value = utc_ms(value)
        elif isinstance(value, StrEnum):
            value = str(value)
        values[field.name] = value
    return values


def record_from_fields(kind: type[Record], values: Mapping[str, Any]) -> Record:
    """The inverse of ``record_fields``; extra keys (such as Mongo's ``_id``) are ignored."""
    kwargs: dict[str, Any] = {}
    for field in fields(kind):
        value = values[field.name]
        if isinstance(value, datetime):
            value = utc_ms(value)
        elif field.name == "status":
            value = DealStatus(value)
        kwargs[field.name] = value
    return kind(**kwargs)
