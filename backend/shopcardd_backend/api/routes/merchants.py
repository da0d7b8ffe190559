"""Merchants: what a merchant's counters reported, seen from the backend."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ..deps import CurrentMerchant, DeviceServiceDep
from ..errors import Problem
from ..models import Conflict, ConflictingRedemption, ConflictList

router = APIRouter(prefix="/v1/merchants", tags=["merchants"])


@router.get("/{merchant_id}/conflicts", responses={401: {}, 403: {}, 422: {}})
def list_conflicts(
    merchant_id: Annotated[str, Path(max_length=64, description="The merchant's id (the API key's)")],
    merchant: CurrentMerchant,
    devices: DeviceServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Vouchers per page")] = 100,
    cursor: Annotated[str | None, Query(max_length=64, description="The previous page's next_cursor")] = None,
) -> ConflictList:
    """Vouchers redeemed at more than one counter, by voucher id, each with every device and time."""
    if merchant_id != merchant:
        raise Problem("forbidden", f"the API key is not merchant {merchant_id!r}'s")
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
