"""Vouchers: a merchant revokes one; every counter refuses it (``revoked``) after its next sync."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from ..deps import CurrentMerchant, DeviceServiceDep, MerchantServiceDep
from ..models import VoucherDetail, VoucherRevoke, VoucherRevoked

router = APIRouter(prefix="/v1/vouchers", tags=["vouchers"])
VoucherId = Annotated[str, Path(max_length=64, description="The voucher's id (its jti)")]


@router.get("/{voucher_id}", responses={401: {}, 403: {}, 404: {}, 422: {}, 503: {}})
def read_voucher(
    voucher_id: VoucherId, merchant: CurrentMerchant, merchants: MerchantServiceDep
) -> VoucherDetail:
    """The merchant's voucher: its deal and customer, when it was issued, where and when it was
    redeemed, and whether it was revoked. Known once the persist worker has stored it."""
    return VoucherDetail.of_story(merchants.voucher(merchant, voucher_id))


@router.post("/{voucher_id}/revoke", responses={401: {}, 403: {}, 404: {}, 422: {}})
def revoke_voucher(
    voucher_id: VoucherId,
    merchant: CurrentMerchant,
    devices: DeviceServiceDep,
    body: Annotated[VoucherRevoke, Body(default_factory=VoucherRevoke)],
) -> VoucherRevoked:
    """Revoke a voucher of the merchant. The body may name its deal (``{"deal_id": ...}``): needed
    only for a voucher the store does not hold yet. Repeating it is harmless."""
    revoked = devices.revoke_voucher(merchant, voucher_id, body.deal_id)
    return VoucherRevoked.model_validate(revoked, from_attributes=True)
