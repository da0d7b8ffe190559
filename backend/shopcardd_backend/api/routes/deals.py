"""Deals: a merchant starts a sale and lists its sales, anyone reads one (with stock left), its
merchant cancels it. Thin adapters over ``DealService`` (``deals.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import CurrentMerchant, DealId, DealServiceDep, MerchantServiceDep
from ..models import DealCreate, DealList, DealPublic, VoucherIssued, VoucherList

router = APIRouter(prefix="/v1/deals", tags=["deals"])


@router.post("", status_code=201, responses={401: {}, 422: {}, 503: {}})
def create_deal(body: DealCreate, merchant: CurrentMerchant, deals: DealServiceDep) -> DealPublic:
    """Start a sale of ``stock`` vouchers, at most ``per_user_limit`` per user."""
    return DealPublic.of(deals.create(merchant, **body.model_dump()))


@router.get("", responses={401: {}, 422: {}, 503: {}})
def list_deals(
    merchant: CurrentMerchant,
    deals: DealServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Deals per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The previous page's next_cursor")
    ] = None,
) -> DealList:
    """The merchant's deals, newest first, each with its stock left and status; follow
    ``next_cursor`` for older ones."""
    views, next_cursor = deals.list_views(merchant, limit, cursor)
    return DealList(deals=[DealPublic.of(view) for view in views], next_cursor=next_cursor)


@router.get("/{deal_id}", responses={404: {}, 503: {}})
def read_deal(deal_id: DealId, deals: DealServiceDep) -> DealPublic:
    """The deal with the vouchers left to claim."""
    return DealPublic.of(deals.get(deal_id))


@router.post("/{deal_id}/cancel", responses={401: {}, 403: {}, 404: {}, 503: {}})
def cancel_deal(deal_id: DealId, merchant: CurrentMerchant, deals: DealServiceDep) -> DealPublic:
    """Close the sale: every later claim is refused with ``sale_not_open``. Repeating it is harmless.

    On a deal the gate lost, the cancellation is recorded in the store (``deal rebuild`` loads
    the deal cancelled) and the answer is 503, as for any other use of that deal."""
    return DealPublic.of(deals.cancel(deal_id, merchant))


@router.get("/{deal_id}/vouchers", responses={401: {}, 403: {}, 404: {}, 422: {}, 503: {}})
def list_vouchers(
    deal_id: DealId,
    merchant: CurrentMerchant,
    merchants: MerchantServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Vouchers per page")] = 100,
    cursor: Annotated[str | None, Query(max_length=64, description="The previous page's next_cursor")] = None,
) -> VoucherList:
    """The vouchers issued on the merchant's deal, by voucher id. A voucher shows once the persist
    worker has stored its claim: shortly after it was issued, not in the same instant."""
    vouchers, next_cursor = merchants.vouchers_of_deal(merchant, deal_id, limit, cursor)
    return VoucherList(vouchers=[VoucherIssued.of(v) for v in vouchers], next_cursor=next_cursor)
