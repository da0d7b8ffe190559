"""A voucher as the store holds it: issued, where it was redeemed, revoked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ...merchants import VoucherStory
from ...stores.base import VoucherRecord
from .fields import STRICT_REQUEST, Identifier, Instant


class ConflictingRedemption(BaseModel):
    device_id: str
    redeemed_at: Instant
    received_at: Instant


class VoucherIssued(BaseModel):
    """An issued voucher as the store holds it (the token itself is not kept)."""

    voucher_id: str
    deal_id: str
    user_id: str
    issued_at: Instant
    expires_at: Instant

    @classmethod
    def of(cls, voucher: VoucherRecord) -> VoucherIssued:
        return cls.model_validate(voucher, from_attributes=True)


class VoucherList(BaseModel):
    vouchers: list[VoucherIssued]
    """By voucher id."""
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next page; ``null`` on the last page."""


class VoucherDetail(VoucherIssued):
    merchant_id: str
    redemptions: list[ConflictingRedemption]
    """Where and when it was redeemed, the first the backend recorded first (two or more: a conflict)."""
    revoked_at: Instant | None
    """When it (or its whole deal) was revoked; ``null``: it was not."""

    @classmethod
    def of_story(cls, story: VoucherStory) -> VoucherDetail:
        voucher = story.voucher
        return cls(
            voucher_id=voucher.voucher_id,
            deal_id=voucher.deal_id,
            user_id=voucher.user_id,
            issued_at=voucher.issued_at,
            expires_at=voucher.expires_at,
            merchant_id=voucher.merchant_id,
            redemptions=[
                ConflictingRedemption.model_validate(r, from_attributes=True) for r in story.redemptions
            ],
            revoked_at=story.revoked_at,
        )


class VoucherRevoke(BaseModel):
    """Optional body: the voucher's deal, for a voucher the store does not hold yet."""

    model_config = STRICT_REQUEST

    deal_id: Identifier | None = None


class VoucherRevoked(BaseModel):
    voucher_id: str
    deal_id: str | None
    merchant_id: str
    status: Literal["revoked"] = "revoked"
    revoked_at: Instant
