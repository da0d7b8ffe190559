"""Deals: a merchant starts a sale, anyone reads it (with stock left), its merchant cancels it."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from fastapi import APIRouter

from ...claims import lost_deal, terms_of
from ...gates.base import ClaimGate
from ...stores.base import DealRecord, DealStatus, DuplicateError
from ..deps import CurrentMerchant, DealId, GateDep, StoreDep
from ..errors import Problem, unavailable
from ..models import DealCreate, DealPublic

router = APIRouter(prefix="/v1/deals", tags=["deals"])
log = logging.getLogger("shopcardd_backend.deals")
ID_ATTEMPTS = 5


def new_deal_id() -> str:
    """48 random bits in 8 characters: short ids keep vouchers (and their QR codes) small."""
    return secrets.token_urlsafe(6)


def _deal_or_404(store: StoreDep, deal_id: str) -> DealRecord:
    deal = store.get_deal(deal_id)
    if deal is None:
        raise Problem("not_found", f"no deal {deal_id[:100]!r}")
    return deal


def _public(deal: DealRecord, gate: ClaimGate) -> DealPublic:
    """The deal with the gate's stock left; 503 (as a claim on it) when the gate lost the deal,
    rather than a stock the gate cannot vouch for."""
    left = gate.stock_left(deal.deal_id)
    if left is None:
        raise lost_deal(deal.deal_id)
    return DealPublic.of(deal, left)


@router.post("", status_code=201, responses={401: {}, 422: {}, 503: {}})
def create_deal(body: DealCreate, merchant: CurrentMerchant, store: StoreDep, gate: GateDep) -> DealPublic:
    """Start a sale of ``stock`` vouchers, at most ``per_user_limit`` per user."""
    for _ in range(ID_ATTEMPTS):
        deal = DealRecord(
            deal_id=new_deal_id(),
            merchant_id=merchant,
            status=DealStatus.ACTIVE,
            created_at=datetime.now(UTC),
            **body.model_dump(),
        )
        if store.get_deal(deal.deal_id) is not None:
            continue
        # The gate first: a gate entry without a stored deal (the store write failed) is
        # unreachable and harmless, while a stored deal the gate never got would answer 503
        # until an operator's `deal rebuild`.
        gate.load_deal(terms_of(deal))
        try:
            store.add_deal(deal)
        except DuplicateError:
            continue
        log.info(
            "deal created", extra={"deal_id": deal.deal_id, "merchant_id": merchant, "stock": deal.stock}
        )
        return DealPublic.of(deal, deal.stock)
    raise unavailable(1, "could not find a free deal id; retry")


@router.get("/{deal_id}", responses={404: {}, 503: {}})
def read_deal(deal_id: DealId, store: StoreDep, gate: GateDep) -> DealPublic:
    """The deal with the vouchers left to claim."""
    deal = _deal_or_404(store, deal_id)
    return _public(deal, gate)


@router.post("/{deal_id}/cancel", responses={401: {}, 403: {}, 404: {}, 503: {}})
def cancel_deal(deal_id: DealId, merchant: CurrentMerchant, store: StoreDep, gate: GateDep) -> DealPublic:
    """Close the sale: every later claim is refused with ``sale_not_open``. Repeating it is harmless.

    On a deal the gate lost, the cancellation is recorded in the store (``deal rebuild`` loads
    the deal cancelled) and the answer is 503, as for any other use of that deal."""
    deal = _deal_or_404(store, deal_id)
    if deal.merchant_id != merchant:
        raise Problem("forbidden", f"deal {deal_id!r} belongs to another merchant")
    cancelled = store.set_deal_status(deal_id, DealStatus.CANCELLED) or deal
    gate.cancel(deal_id)
    log.info("deal cancelled", extra={"deal_id": deal_id, "merchant_id": merchant})
    return _public(cancelled, gate)
