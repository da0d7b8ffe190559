"""A deal's statistics: its merchant sees claims issued and refused, by minute. A thin adapter
over ``stats.py``."""

from __future__ import annotations

from fastapi import APIRouter

from ...stats import deal_stats
from ..deps import CurrentMerchant, DealId, StoreDep
from ..models import DealStatsPublic

router = APIRouter(prefix="/v1/deals", tags=["deals"])


@router.get("/{deal_id}/stats", responses={401: {}, 403: {}, 404: {}, 503: {}})
def read_deal_stats(deal_id: DealId, merchant: CurrentMerchant, store: StoreDep) -> DealStatsPublic:
    """Claims issued and refused (by outcome) on the merchant's own deal, per minute in UTC, oldest
    first, and in total. The claims issued are the deal's vouchers the persist worker stored, the
    refusals the analytics worker's counts: a claim shows here shortly after it was decided (its
    event through the queue), not in the same instant."""
    return DealStatsPublic.of(deal_stats(store, deal_id, merchant))
