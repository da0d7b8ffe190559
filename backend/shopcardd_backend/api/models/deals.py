"""A deal as a merchant starts it (``DealCreate``, checked strictly) and as the API answers it."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from shopcardd_voucher import MAX_VOUCHER_LIFETIME_SECONDS

from ...deals import DealPhase, DealView
from .fields import STRICT_REQUEST, UtcDatetime

ENDS_AT_GRACE: Final = timedelta(seconds=60)
"""How far in the past a new deal's ``ends_at`` may lie: the merchant's clock may run behind ours."""


def _printable(value: str) -> str:
    """No control characters, not blank: a title is shown on screens and receipts, and logged."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be blank: give the deal a title a customer can read")
    return value


class DealCreate(BaseModel):
    """What a merchant sends to start a sale; the merchant comes from the API key."""

    model_config = STRICT_REQUEST

    title: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
    stock: int = Field(gt=0, le=10_000_000)
    per_user_limit: int = Field(gt=0, le=1_000)
    voucher_ttl_seconds: int = Field(gt=0, le=MAX_VOUCHER_LIFETIME_SECONDS)  # what counters accept
    starts_at: UtcDatetime | None = None
    ends_at: UtcDatetime | None = None

    @field_validator("voucher_ttl_seconds", mode="wrap")
    @classmethod
    def _ttl_in_days(cls, value: object, handler: ValidatorFunctionWrapHandler) -> int:
        """The bound in days, the unit a merchant thinks in, rather than 31622400 seconds."""
        try:
            return int(handler(value))
        except ValidationError as exc:
            if any(error["type"] == "less_than_equal" for error in exc.errors()):
                days = MAX_VOUCHER_LIFETIME_SECONDS // 86_400
                raise ValueError(
                    f"must be at most {days} days ({MAX_VOUCHER_LIFETIME_SECONDS} seconds): "
                    "the counters refuse a voucher that lives longer"
                ) from None
            raise

    @field_validator("ends_at")
    @classmethod
    def _ends_in_the_future(cls, ends_at: datetime | None, info: ValidationInfo) -> datetime | None:
        """A sale that ends before it starts, or has already ended, could never sell a voucher:
        every claim would be ``sale_not_open``, so the merchant hears it now, naming the field."""
        if ends_at is None:
            return None
        starts_at = info.data.get("starts_at")
        if starts_at is not None and ends_at <= starts_at:
            raise ValueError(f"must be after starts_at ({_rfc3339(starts_at)})")
        now = datetime.now(UTC).replace(microsecond=0)
        if ends_at < now - ENDS_AT_GRACE:
            raise ValueError(f"is in the past (now is {_rfc3339(now)}): the sale would never open")
        return ends_at


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class DealPublic(BaseModel):
    deal_id: str
    merchant_id: str
    title: str
    stock: int
    stock_left: int | None
    """Vouchers left to claim (``null`` in a list for a deal the claim gate lost)."""
    per_user_limit: int
    voucher_ttl_seconds: int
    starts_at: datetime | None
    ends_at: datetime | None
    status: DealPhase
    """``scheduled`` (before ``starts_at``), ``active``, ``sold_out`` (no stock left), ``ended``
    (from ``ends_at`` on) or ``cancelled``, as of the answer."""

    @classmethod
    def of(cls, view: DealView) -> DealPublic:
        deal = view.deal
        return cls(
            deal_id=deal.deal_id,
            merchant_id=deal.merchant_id,
            title=deal.title,
            stock=deal.stock,
            stock_left=view.stock_left,
            per_user_limit=deal.per_user_limit,
            voucher_ttl_seconds=deal.voucher_ttl_seconds,
            starts_at=deal.starts_at,
            ends_at=deal.ends_at,
            status=view.phase,
        )


class DealList(BaseModel):
    deals: list[DealPublic]
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next (older) page; ``null`` on the last page."""
