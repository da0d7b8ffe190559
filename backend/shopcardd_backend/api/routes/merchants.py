"""Merchants: what a merchant's counters reported, seen from the backend."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from ..deps import CurrentMerchant, DeviceServiceDep, MerchantServiceDep
from ..errors import Problem
from ..models import Conflict, ConflictingRedemption, ConflictList, KeyRotate, KeyRotated

router = APIRouter(prefix="/v1/merchants", tags=["merchants"])
MerchantId = Annotated[str, Path(max_length=64, description="The merchant's id (the API key's)")]


def own_merchant(merchant_id: str, merchant: str) -> None:
    """403 unless the path names the key's own merchant."""
    if merchant_id != merchant:
        raise Problem("forbidden", f"the API key is not the key of merchant {merchant_id!r}")


@router.post("/{merchant_id}/keys", status_code=201, responses={401: {}, 403: {}, 422: {}})
def rotate_key(
    merchant_id: MerchantId,
    merchant: CurrentMerchant,
    merchants: MerchantServiceDep,
    body: Annotated[KeyRotate, Body(default_factory=KeyRotate)],
) -> KeyRotated:
    """Replace the merchant's API key (a lost or leaked one too, with the old key or while it
    still works). The new key is in this answer only; the old one keeps working for
    ``grace_seconds`` (default an hour), then is refused."""
    own_merchant(merchant_id, merchant)
    api_key, until = merchants.rotate_key(merchant, body.grace_seconds)
    return KeyRotated(merchant_id=merchant, api_key=api_key, old_key_valid_until=until)


@router.get("/{merchant_id}/conflicts", responses={401: {}, 403: {}, 422: {}})
def list_conflicts(
    merchant_id: MerchantId,
    merchant: CurrentMerchant,
    devices: DeviceServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Vouchers per page")] = 100,
    cursor: Annotated[str | None, Query(max_length=64, description="The previous page's next_cursor")] = None,
) -> ConflictList:
    """Vouchers redeemed at more than one counter, by voucher id, each with every device and time."""
    own_merchant(merchant_id, merchant)
    groups = devices.conflicts(merchant, limit, cursor)
    conflicts = [
        Conflict(
            voucher_id=group[0].voucher_id,
            deal_id=group[0].deal_id,
            redemptions=[ConflictingRedemption.model_validate(r, from_attributes=True) for r in group],
        )
        for group in groups
    ]
    return ConflictList(
        conflicts=conflicts, next_cursor=conflicts[-1].voucher_id if len(groups) == limit else None
    )
